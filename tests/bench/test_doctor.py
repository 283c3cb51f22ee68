"""bench.doctor on a Jetson assembled from recorded outputs of the real tools (files and a fake
command runner; tests/bench/data/jetson/ says where each was recorded), and on this machine for real."""

from __future__ import annotations

from pathlib import Path

import pytest
from jetson_recorded import JETSON_DATA, FakeRun, recorded

from bench.doctor import BUILD_MEMORY_GIB, Check, DoctorEnv, DoctorReport, TorchCuda, hides_system_packages, run_doctor

JETSON_TORCH = TorchCuda("2.5.0a0+872d972e41.nv24.08", "12.6", True, "Orin")
VERSIONS = {"onnxruntime-gpu": "1.20.0", "openvino": "2025.1.0"}


def jetson(tmp_path: Path, *, nvpmodel: str = "nvpmodel_q_maxn_super.txt",
           clocks: str | None = "jetson_clocks_show_agx_orin_30w_locked.txt", tensorrt: str | None = "10.3.0.30",
           system_site_packages: bool = True, available_kib: int | None = None) -> tuple[DoctorEnv, FakeRun]:
    """A JetPack 6.2 board. The outputs come from several recorded boards (an Orin Nano Super's
    release and power mode, an AGX Orin's clocks): the doctor reads each on its own."""
    tmp_path.mkdir(exist_ok=True)
    release = tmp_path / "nv_tegra_release"
    release.write_text(recorded("nv_tegra_release_r36.4.3.txt"))
    meminfo = tmp_path / "meminfo"
    text = recorded("meminfo_ci_machine.txt")
    if available_kib is not None:  # the recorded file with MemAvailable changed
        text = "\n".join(f"MemAvailable:   {available_kib} kB" if line.startswith("MemAvailable:") else line
                         for line in text.splitlines())
    meminfo.write_text(text)
    cfg = tmp_path / "venv" / "pyvenv.cfg"
    cfg.parent.mkdir()
    cfg.write_text(f"home = /usr/bin\ninclude-system-site-packages = {str(system_site_packages).lower()}\n"
                   "version = 3.10.12\n")
    answers = {("nvpmodel", "-q"): recorded(nvpmodel)}
    if clocks is not None:
        answers[("jetson_clocks", "--show")] = recorded(clocks)
    run = FakeRun(answers)
    env = DoctorEnv(nv_tegra_release=release, meminfo=meminfo, venv_config=cfg, run=run,
                    torch=lambda: JETSON_TORCH, tensorrt=lambda: tensorrt, version=VERSIONS.get)
    return env, run


def by_name(report: DoctorReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def test_a_ready_jetson(tmp_path: Path) -> None:
    report = run_doctor(jetson(tmp_path)[0])
    checks = by_name(report)
    assert report.ok and report.jetson == "L4T R36.4.3 (JetPack 6.2)"
    assert list(checks) == ["jetpack", "tensorrt", "cuda", "power mode", "clocks", "memory", "onnxruntime",
                            "openvino"]
    assert all(c.status == "ok" for c in report.checks), [(c.name, c.found) for c in report.checks]
    assert checks["tensorrt"].found == "TensorRT 10.3.0.30"
    assert checks["cuda"].found == "torch 2.5.0a0+872d972e41.nv24.08, CUDA 12.6, GPU Orin"
    assert checks["power mode"].found.startswith("MAXN_SUPER (2)")
    assert checks["onnxruntime"].found == "onnxruntime 1.20.0"  # JetPack's GPU build has its own name
    assert "nothing blocks" in report.verdict()


def test_a_jetson_venv_that_hides_jetpacks_tensorrt(tmp_path: Path) -> None:
    env, _ = jetson(tmp_path, tensorrt=None, system_site_packages=False)
    report = run_doctor(env)
    trt = by_name(report)["tensorrt"]
    assert not report.ok and report.blocking == [trt]
    assert trt.status == "fail" and "--system-site-packages" in trt.fix
    env, _ = jetson(tmp_path / "2", tensorrt=None)  # the venv sees system packages: JetPack lacks it
    assert "sudo apt install nvidia-jetpack" in by_name(run_doctor(env))["tensorrt"].fix


def test_power_mode_clocks_and_memory_warn_with_their_fix(tmp_path: Path) -> None:
    env, _ = jetson(tmp_path, nvpmodel="nvpmodel_q_verbose_25w.txt",
                    clocks="jetson_clocks_show_orin_nano_25w_dynamic.txt",
                    available_kib=int(BUILD_MEMORY_GIB * 2**20) // 2)
    report = run_doctor(env)
    checks = by_name(report)
    assert report.ok  # warnings do not block
    assert checks["power mode"].status == "warn" and "25W (1)" in checks["power mode"].found
    assert "nvpmodel -m" in checks["power mode"].fix
    assert checks["clocks"].status == "warn" and checks["clocks"].fix == "sudo jetson_clocks"
    assert "cpu0" in checks["clocks"].found
    assert checks["memory"].status == "warn" and "1.0 GiB available" in checks["memory"].found


def test_clocks_unreadable_without_root(tmp_path: Path) -> None:
    env, run = jetson(tmp_path, clocks=None)
    clocks = by_name(run_doctor(env))["clocks"]
    assert clocks.status == "warn" and "needs root" in clocks.found and "sudo jetson_clocks" in clocks.fix
    assert ("sudo", "-n", "jetson_clocks", "--show") in run.calls  # tried, without a prompt


def test_an_old_jetpack_and_its_tensorrt(tmp_path: Path) -> None:
    env, _ = jetson(tmp_path, tensorrt="8.5.2.2")
    # JetPack 5.1.4's release line, in the layout of the recorded R36 file
    env.nv_tegra_release.write_text("# R35 (release), REVISION: 6.0, BOARD: generic, EABI: aarch64\n")
    checks = by_name(run_doctor(env))
    assert checks["jetpack"].status == "warn" and "JetPack 5.1.4" in checks["jetpack"].found
    assert checks["tensorrt"].status == "fail" and "needs 10" in checks["tensorrt"].found


def test_pyvenv_cfg() -> None:
    assert not hides_system_packages(None)  # not in a virtual environment: the system's packages are seen
    assert hides_system_packages(JETSON_DATA / "no such pyvenv.cfg")


def test_this_machine(tmp_path: Path) -> None:
    """For real: no TensorRT and no GPU on our machines, and the doctor says how to get them."""
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("this machine is a Jetson")
    from artifacts.backends import tensorrt_available

    report = run_doctor()
    checks = by_name(report)
    assert checks["jetpack"].status == "info" and "power mode" not in checks
    assert checks["onnxruntime"].status == "ok" and checks["memory"].status in ("ok", "warn")
    if not tensorrt_available():
        trt = checks["tensorrt"]
        assert trt.status == "fail" and "pip install 'glnet-export[tensorrt]'" in trt.fix and not report.ok
        assert run_doctor(DoctorEnv(cpu_only=True)).ok  # the CPU back-ends are all here
