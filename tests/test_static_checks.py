"""The type checker and the linter, as part of the suite: `python -m pytest` is the one
command that says whether the code is fit to land (the README's test command).

Run here rather than after pytest because the suite keeps both cores busy while mypy, on
its own, would hold one and leave the other idle for half a minute."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# mypy and ruff come with the dev extra: test_lazy_imports.py fails when they are missing.


def test_mypy_finds_no_type_error() -> None:
    # The files and settings are pyproject's [tool.mypy]; tensorrt-stubs (the README's test
    # command installs them) make it check the TensorRT code against TensorRT's API.
    run = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "Success: no issues found" in run.stdout, run.stdout[-2000:]


def test_ruff_finds_nothing() -> None:
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
