"""bench.jetson's parsers on the real tools' recorded outputs, and the Jetson fields of the device
info that every bench result records (tests/bench/data/jetson/ says where each output came from)."""

from __future__ import annotations

from pathlib import Path

import pytest
from jetson_recorded import FakeRun, recorded

from artifacts.tegra import (
    L4TRelease,
    is_jetson,
    jetson_model,
    meminfo_bytes,
    parse_nv_tegra_release,
    read_l4t_release,
    read_text,
)
from bench import sysinfo
from bench.doctor import check_jetpack
from bench.jetson import parse_jetson_clocks, parse_nvpmodel, read_clock_state
from bench.report import BenchReport, to_dict
from bench.sysinfo import device_from_dict

CLOCKS = "jetson_clocks_show_{}.txt"
JETSON_INFO = sysinfo.jetson_info  # the real one, before any test replaces it


@pytest.mark.parametrize("name, version, jetpack", [("nv_tegra_release_r36.4.3.txt", "36.4.3", "6.2"),
                                                    ("nv_tegra_release_r39.2.0.txt", "39.2.0", "7.2")])
def test_l4t_release_and_its_jetpack(name: str, version: str, jetpack: str) -> None:
    release = parse_nv_tegra_release(recorded(name))
    assert release is not None and release.version == version and release.jetpack == jetpack
    assert release.line.startswith(f"R{version.split('.')[0]} (release), REVISION:")
    assert release.describe() == f"L4T R{version} (JetPack {jetpack})"


def test_a_release_the_table_does_not_know_is_placed_by_its_major_only() -> None:
    assert L4TRelease(36, "9.1", "").jetpack == "6.x" and L4TRelease(38, "7.0", "").jetpack == "7.x"
    assert L4TRelease(35, "6.0", "").jetpack == "5.1.4" and L4TRelease(35, "9.0", "").jetpack == "5.x"
    assert L4TRelease(41, "1.0", "").describe() == "L4T R41.1.0 (JetPack unknown)"
    assert parse_nv_tegra_release("") is None and parse_nv_tegra_release("Ubuntu 22.04") is None


def test_one_reader_of_the_system_files_for_every_layer(tmp_path: Path) -> None:
    """artifacts.tegra reads /proc/meminfo and the release file for export, sysinfo and doctor alike."""
    meminfo, release = tmp_path / "meminfo", tmp_path / "nv_tegra_release"
    meminfo.write_text(recorded("meminfo_ci_machine.txt"))
    assert meminfo_bytes("MemTotal", meminfo) == 24731400 * 1024 == sysinfo.memory_bytes(meminfo)
    assert meminfo_bytes("MemAvailable", meminfo) == 22302360 * 1024
    assert meminfo_bytes("MemAvailable", tmp_path / "absent") is None and read_text(None) == ""
    # bench records the release line the doctor parses, also where a comment comes first
    release.write_text("# a note\n" + recorded("nv_tegra_release_r36.4.3.txt"))
    parsed = parse_nv_tegra_release(read_text(release))
    assert parsed is not None and JETSON_INFO(tmp_path / "model", release)[2] == parsed.line
    release.write_text("not a release\n")  # a file that names no release: no release recorded
    assert JETSON_INFO(tmp_path / "model", release)[2] == ""


@pytest.mark.parametrize("text", ["", "not a release\n", "# R36 (release)\n"])
def test_a_release_file_that_names_no_release_is_not_a_jetson_anywhere(tmp_path: Path, text: str) -> None:
    """export (jetson_model), the bench results (sysinfo) and the doctor share one rule: the file's
    presence alone does not make a Jetson; a release it names does."""
    (tmp_path / "etc").mkdir()
    release = tmp_path / "etc/nv_tegra_release"
    release.write_text(text)
    board, _, line = JETSON_INFO(tmp_path / "model", release)  # what a bench result records
    assert jetson_model(tmp_path) is None and line == "" and not is_jetson(board, line)
    assert check_jetpack(read_l4t_release(release)).found.startswith("not a Jetson")
    release.write_text(recorded("nv_tegra_release_r36.4.3.txt"))
    board, _, line = JETSON_INFO(tmp_path / "model", release)
    assert jetson_model(tmp_path) == "Jetson" and is_jetson(board, line)
    assert check_jetpack(read_l4t_release(release)).found == "L4T R36.4.3 (JetPack 6.2)"


def test_nvpmodel_plain_and_verbose() -> None:
    maxn = parse_nvpmodel(recorded("nvpmodel_q_maxn_super.txt"))
    assert maxn is not None and (maxn.name, maxn.id, str(maxn)) == ("MAXN_SUPER", 2, "MAXN_SUPER (2)")
    assert maxn.unconstrained
    capped = parse_nvpmodel(recorded("nvpmodel_q_verbose_25w.txt"))
    assert capped is not None and (capped.name, capped.id) == ("25W", 1) and not capped.unconstrained
    assert parse_nvpmodel("") is None


@pytest.mark.parametrize("name, locked, mode", [
    ("orin_nano_25w_dynamic", False, "25W"),
    ("agx_orin_30w_dynamic", False, "MODE_30W"),
    ("agx_orin_30w_locked", True, "MODE_30W"),  # CPUs 8-11 offline, below their own maximum: not counted
    ("agx_orin_r39_locked", True, "MAXN"),  # JetPack 7: no Online= and no FreqOverride=
])
def test_jetson_clocks_show(name: str, locked: bool, mode: str) -> None:
    state = parse_jetson_clocks(recorded(CLOCKS.format(name)))
    assert state is not None and state.locked is locked and state.power_mode == mode
    names = [c.name for c in state.clocks]
    assert "GPU" in names and "EMC" in names and names[0] == "cpu0"
    assert ("not locked" in state.describe()) is not locked


def test_which_clocks_are_not_held() -> None:
    state = parse_jetson_clocks(recorded(CLOCKS.format("orin_nano_25w_dynamic")))
    assert state is not None and state.unpinned == [f"cpu{i}" for i in range(6)] + ["GPU", "EMC"]
    offline = parse_jetson_clocks(recorded(CLOCKS.format("agx_orin_30w_dynamic")))
    assert offline is not None and not {"cpu8", "cpu9", "cpu10", "cpu11"} & set(offline.unpinned)
    assert [c.online for c in offline.clocks[:12]] == [True] * 8 + [False] * 4


def test_a_gpu_at_its_maximum_but_not_held_there_is_not_locked() -> None:
    """A busy GPU under its governor also runs at its maximum: only a raised minimum says jetson_clocks
    holds it (the locked recording with the GPU's minimum put back to its unlocked value)."""
    text = recorded(CLOCKS.format("agx_orin_30w_locked")).replace("GPU MinFreq=612000000", "GPU MinFreq=306000000")
    state = parse_jetson_clocks(text)
    assert state is not None and state.unpinned == ["GPU"]


def test_jetson_clocks_without_clock_lines_is_unknown() -> None:
    assert parse_jetson_clocks("") is None
    assert parse_jetson_clocks("NV Power Mode: MAXN\n") is None


def test_clock_state_falls_back_to_sudo_without_a_prompt() -> None:
    run = FakeRun({("sudo", "-n", "jetson_clocks", "--show"): recorded(CLOCKS.format("agx_orin_30w_locked"))})
    state = read_clock_state(run)
    assert state is not None and state.locked
    assert run.calls == [("jetson_clocks", "--show"), ("sudo", "-n", "jetson_clocks", "--show")]
    assert read_clock_state(FakeRun({})) is None


def _device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run: FakeRun, jetson: bool) -> sysinfo.DeviceInfo:
    model, release = tmp_path / "model", tmp_path / "nv_tegra_release"
    if jetson:
        model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
        release.write_text(recorded("nv_tegra_release_r36.4.3.txt"))
    monkeypatch.setattr(sysinfo, "_command", run)
    monkeypatch.setattr(sysinfo, "jetson_info", lambda: JETSON_INFO(model, release))
    return sysinfo.collect_device_info(1, idle_sample_s=0)


def test_bench_device_info_records_power_mode_and_clock_state(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    run = FakeRun({("nvpmodel", "-q"): recorded("nvpmodel_q_maxn_super.txt"),
                   ("jetson_clocks", "--show"): recorded(CLOCKS.format("agx_orin_30w_dynamic"))})
    info = _device(monkeypatch, tmp_path, run, jetson=True)
    assert info.power_mode == "MAXN_SUPER (2)" and info.clocks_locked is False
    assert info.l4t_release.startswith("R36 (release), REVISION: 4.3")
    assert "sudo jetson_clocks" in info.clock_warning() and "clocks NOT locked" in info.summary()
    back = device_from_dict(to_dict(BenchReport("bench", info, {}))["device"])  # as a result file keeps it
    assert back.clocks_locked is False and back.power_mode == "MAXN_SUPER (2)"

    run.answers[("jetson_clocks", "--show")] = recorded(CLOCKS.format("agx_orin_30w_locked"))
    assert _device(monkeypatch, tmp_path, run, jetson=True).clock_warning() == ""
    del run.answers[("jetson_clocks", "--show")]  # not root, no password-less sudo
    unknown = _device(monkeypatch, tmp_path, run, jetson=True)
    assert unknown.clocks_locked is None and "needs root" in unknown.clock_warning()


def test_off_a_jetson_the_clocks_are_not_asked_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    run = FakeRun({})
    info = _device(monkeypatch, tmp_path, run, jetson=False)
    assert info.clocks_locked is None and info.power_mode == "" and info.clock_warning() == ""
    assert not [argv for argv in run.calls if "jetson_clocks" in argv or argv[0] == "sudo"]
    assert device_from_dict({"hostname": "old result, written before clocks_locked"}).clocks_locked is None


def test_another_arm_board_is_not_taken_for_a_jetson(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Every ARM board has a device-tree model; only a Jetson's names it (or has an L4T release).
    run = FakeRun({})
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.4\x00")
    monkeypatch.setattr(sysinfo, "_command", run)
    monkeypatch.setattr(sysinfo, "jetson_info", lambda: JETSON_INFO(model, tmp_path / "no_release"))
    info = sysinfo.collect_device_info(1, idle_sample_s=0)
    assert info.board_model.startswith("Raspberry Pi") and not info.is_jetson
    assert info.clocks_locked is None and info.clock_warning() == "" and "clocks" not in info.summary()
    assert not [argv for argv in run.calls if "jetson_clocks" in argv or argv[0] == "sudo"]


def test_bench_warns_once_when_the_jetson_clocks_are_not_locked(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from glnet_export.cli import app

    run = FakeRun({("jetson_clocks", "--show"): recorded(CLOCKS.format("orin_nano_25w_dynamic"))})
    info = _device(monkeypatch, tmp_path, run, jetson=True)
    monkeypatch.setattr(sysinfo, "collect_device_info", lambda *a, **k: info)
    result = CliRunner().invoke(app, ["bench", str(tmp_path / "missing.onnx"), "--iters", "1"])
    assert result.exit_code == 1  # the file is missing: the warning came before that
    warnings = [line for line in result.output.splitlines() if "clocks are not locked" in line]
    assert len(warnings) == 1 and "sudo jetson_clocks" in warnings[0]
