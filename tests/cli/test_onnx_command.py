"""`glnet-export onnx` as a user types it: exit codes, one-line errors, the JSON report,
random weights announced, a checkpoint's SHA-256 recorded, a failed verification kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import TINY_SIZE, reference_form, rel_error, shared_tiny, torch_logits
from typer.testing import CliRunner

import glnet
import runtimes
from glnet_export.cli import app

TINY = "glnet_tiny"


@pytest.fixture(scope="module")
def tiny() -> glnet.GLNet:
    return shared_tiny()


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_exports_verifies_and_writes_a_json_report(tmp_path: Path) -> None:
    out, report = tmp_path / "t.onnx", tmp_path / "report.json"
    code, stdout, stderr = _cli("onnx", "--model", TINY, "-o", str(out), "--input-size", "96x128",
                                "--json", str(report))
    assert code == 0, stderr
    assert "RANDOM" in stderr, "random weights are announced loudly"
    assert "PASSED" in stdout and "nodes" in stdout
    data = json.loads(report.read_text())
    assert data["verification"]["passed"] is True
    assert data["export"]["metadata"]["input_size"] == [96, 128]
    assert len(data["verification"]["results"]) == 2  # the export shape and another batch


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "glnet_5g"], "unknown model 'glnet_5g'"),
        (["--model", TINY, "--input-size", "16"], "at least 32"),
        (["--model", TINY, "--input-size", "abc"], "is not N or HxW"),
        (["--model", TINY, "--dynamic", "all"], "--dynamic must be one of"),
        (["--model", TINY, "-o", "/nonexistent-dir/x.onnx"], "does not exist"),
    ],
)
def test_cli_bad_input_gives_one_line_and_no_traceback(args: list[str], expected: str) -> None:
    code, stdout, stderr = _cli("onnx", *args)
    assert code != 0
    lines = [ln for ln in stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and expected in lines[0], stderr
    assert "Traceback" not in stderr + stdout


def test_cli_bad_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    out = tmp_path / "never.onnx"
    code, _, stderr = _cli("onnx", "--model", TINY, "--checkpoint", str(bad), "-o", str(out))
    assert code == 1 and "not a PyTorch checkpoint" in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_cli_unwritable_output(tmp_path: Path) -> None:
    # Targets no one can write, root included (the tests may run as root, who passes any
    # permission-bit check): inside a regular file, in /proc, and a folder as the file name.
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for target, message in ((a_file / "x.onnx", "is not a folder"), (Path("/proc/x.onnx"), "cannot write in folder"),
                            (tmp_path, "is a folder")):
        code, _, stderr = _cli("onnx", "--model", TINY, "-o", str(target))
        assert code == 1 and message in stderr and "Traceback" not in stderr, (target, stderr)
        assert len(stderr.strip().splitlines()[-1]) < 200
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"], "no temporary file left behind"


def test_cli_with_checkpoint_records_its_sha256(tiny: glnet.GLNet, tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": tiny.state_dict()}, ckpt)
    out = tmp_path / "t.onnx"
    code, stdout, stderr = _cli("onnx", "--model", TINY, "--checkpoint", str(ckpt), "-o", str(out),
                                "--input-size", str(TINY_SIZE))
    assert code == 0, stderr
    assert "RANDOM" not in stderr
    import hashlib

    props = {p.key: p.value for p in onnx.load(out).metadata_props}
    assert props["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    with runtimes.load(out) as runner:
        x = np.random.default_rng(1).standard_normal((2, 3, TINY_SIZE, TINY_SIZE), dtype=np.float32)
        assert rel_error(torch_logits(tiny, x), runner.infer(x)) < 1e-5




def test_cli_export_that_fails_verification_exits_1_keeps_the_file_and_says_failed(
    tiny: glnet.GLNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same silent mis-export, through the command: exit code 1, the file kept for
    # inspection, FAILED in the summary and in the JSON report. The weights, size (the
    # default 224) and stand-in are test_onnx_export's: the session traces the wrong form once.
    monkeypatch.setattr(glnet.GLNet, "to_deploy", reference_form)
    ckpt = tmp_path / "tiny.pth"
    torch.save({"model": tiny.state_dict()}, ckpt)
    out, report = tmp_path / "mis.onnx", tmp_path / "mis.json"
    code, stdout, stderr = _cli("onnx", "--model", TINY, "--checkpoint", str(ckpt), "--dynamic", "shape",
                                "-o", str(out), "--json", str(report))
    assert code == 1 and "FAILED" in stdout + stderr and "Traceback" not in stdout + stderr
    assert out.is_file()
    data = json.loads(report.read_text())
    assert data["verification"]["passed"] is False
    assert any(not r["passed"] for r in data["verification"]["results"])
