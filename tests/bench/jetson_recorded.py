"""The recorded outputs of a Jetson's own tools (tests/bench/data/jetson/), and a fake command
runner that answers with them. Each file starts with a header saying where it was recorded."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

JETSON_DATA = Path(__file__).resolve().parent / "data" / "jetson"
MARKER = "--- recorded output ---\n"


def recorded(name: str) -> str:
    """The tool's output in `name`, without the provenance header."""
    text = (JETSON_DATA / name).read_text(encoding="utf-8")
    assert MARKER in text, f"{name} has no provenance header"
    return text.split(MARKER, 1)[1]


class FakeRun:
    """A command runner (argv -> stdout, "" for anything unknown, like a missing or failing
    command) that also records what it was asked."""

    def __init__(self, answers: Mapping[tuple[str, ...], str]) -> None:
        self.answers = dict(answers)
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, *argv: str, timeout: float = 5.0) -> str:
        self.calls.append(argv)
        return self.answers.get(argv, "")
