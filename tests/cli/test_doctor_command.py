"""`glnet-export doctor` on this machine, for real: its lines, exit code and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from artifacts.backends import tensorrt_available
from glnet_export.cli import app

pytestmark = pytest.mark.skipif(tensorrt_available() or Path("/etc/nv_tegra_release").exists(),
                                reason="written for a machine without TensorRT and not a Jetson (our CI machines)")


def test_doctor_says_what_blocks_and_how_to_fix_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["doctor", "--json", str(tmp_path / "d.json")])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    trt = next(line for line in lines if " tensorrt " in f" {line} ")
    assert trt.startswith("FAIL") and "pip install 'glnet-export[tensorrt]'" in trt
    assert lines[-1].startswith("NOT READY") and "--cpu-only" in lines[-1]
    data = json.loads((tmp_path / "d.json").read_text())
    assert data["ok"] is False and data["jetson"] == ""
    assert {c["name"]: c["status"] for c in data["checks"]}["tensorrt"] == "fail"
    assert all(set(c) == {"name", "status", "found", "fix"} for c in data["checks"])


def test_doctor_cpu_only_and_json_on_stdout() -> None:
    result = CliRunner().invoke(app, ["doctor", "--cpu-only", "--json", "-"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and {c["name"]: c["status"] for c in data["checks"]}["tensorrt"] == "info"
