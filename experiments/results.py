"""Where the measurement scripts write their results: a dated file under docs/benchmarks/."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "benchmarks"


def results_path(name: str) -> Path:
    """docs/benchmarks/<YYYY-MM-DD>-<name>.json in the repository (the folder is made if missing).

    The date is UTC's, as in the `created` field of a BenchReport; a second run on the same day
    writes over the first."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    return RESULTS / f"{datetime.now(timezone.utc):%Y-%m-%d}-{name}.json"


def default_help(name: str) -> str:
    """The --json help's words for the default path, without making the folder."""
    return f"write the results here (default: docs/benchmarks/<YYYY-MM-DD>-{name}.json)"
