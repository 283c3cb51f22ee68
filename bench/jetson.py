"""A Jetson's power mode and clock state, parsed from the text its own tools print.

Two sources, each parsed by a pure function so the tests feed them recorded outputs
(tests/bench/data/jetson/, each file saying where it was recorded); the third, the L4T
release in `/etc/nv_tegra_release` and its JetPack, is `artifacts.tegra`'s (export decides
by it too whether it builds on a Jetson):

- `nvpmodel -q`: the power mode (a name such as MAXN_SUPER or 25W, then its id);
- `jetson_clocks --show`: every clock's minimum, maximum and current frequency.

A Jetson's timings depend on both the power mode (it caps the clocks) and on whether
`sudo jetson_clocks` pinned the clocks at those caps: without it the CPU and GPU scale down
between requests and latencies wander. `jetson_clocks --show` needs root
(jetson_stats' author in rbonghi/jetson_stats#52: "tegrastats and jetson_clocks ... require
... the sudo elevation"), so `read_clock_state` also tries `sudo -n`, which
answers only when sudo needs no password (a recent `sudo jetson_clocks` leaves it so for
a few minutes) and never prompts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# argv -> stdout, "" when the command is missing or fails (bench.sysinfo's runner is one).
Run = Callable[..., str]

_POWER = re.compile(r"NV Power Mode:\s*(\S+)")
_CLOCK = re.compile(r"^(?:(?P<cpu>cpu\d+):|(?P<unit>GPU|EMC))\s+(?P<fields>.*MaxFreq=.*)$")


@dataclass(frozen=True)
class PowerMode:
    name: str  # "MAXN_SUPER", "25W", "MODE_30W"
    id: int | None  # nvpmodel's number for it (`nvpmodel -m ID`)

    def __str__(self) -> str:
        return self.name + (f" ({self.id})" if self.id is not None else "")

    @property
    def unconstrained(self) -> bool:
        """MAXN / MAXN_SUPER: no power cap on the clocks (the board's fastest mode)."""
        return self.name.upper().startswith("MAXN")


def parse_nvpmodel(text: str) -> PowerMode | None:
    """`nvpmodel -q` (also `--verbose`): 'NV Power Mode: NAME' then the mode's id on its own line."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _POWER.search(line)
        if match:
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return PowerMode(match.group(1), int(following) if following.isdigit() else None)
    return None


@dataclass(frozen=True)
class Clock:
    name: str  # "cpu0", "GPU", "EMC"
    min_hz: int
    max_hz: int
    current_hz: int
    online: bool = True  # JetPack 6 prints Online=0 for the cores a power mode switches off

    @property
    def pinned(self) -> bool:
        """At its maximum and held there. EMC: at its maximum (jetson_clocks overrides its rate
        but leaves the minimum on JetPack 6). CPU and GPU: the minimum raised to the maximum too,
        since a busy core under schedutil also runs at its maximum for a while."""
        at_max = self.current_hz == self.max_hz
        return at_max if self.name == "EMC" else at_max and self.min_hz == self.max_hz


@dataclass(frozen=True)
class ClockState:
    clocks: tuple[Clock, ...]
    power_mode: str = ""  # the last line of `jetson_clocks --show`

    @property
    def unpinned(self) -> list[str]:
        """The online CPU, GPU and EMC clocks not held at their maximum."""
        return [c.name for c in self.clocks if c.online and not c.pinned]

    @property
    def locked(self) -> bool:
        return not self.unpinned

    def describe(self) -> str:
        if self.locked:
            return "clocks locked at their maximum (jetson_clocks)"
        names = self.unpinned
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return f"clocks not locked: {shown} below or not held at their maximum"


def _freq(fields: str, key: str) -> int | None:
    match = re.search(rf"\b{key}=(\d+)", fields)
    return int(match.group(1)) if match else None


def parse_jetson_clocks(text: str) -> ClockState | None:
    """`jetson_clocks --show` (JetPack 5, 6 and 7 layouts), or None when it lists no CPU or GPU clock."""
    clocks = []
    for line in text.splitlines():
        match = _CLOCK.match(line.strip())
        if not match:
            continue
        fields = match.group("fields")
        lo, hi, cur = (_freq(fields, k) for k in ("MinFreq", "MaxFreq", "CurrentFreq"))
        if lo is None or hi is None or cur is None:
            continue
        online = _freq(fields, "Online")
        clocks.append(Clock(match.group("cpu") or match.group("unit"), lo, hi, cur, online != 0))
    if not any(c.name != "EMC" for c in clocks):
        return None
    mode = parse_nvpmodel(text)
    return ClockState(tuple(clocks), mode.name if mode else "")


def read_power_mode(run: Run) -> PowerMode | None:
    """`nvpmodel -q` through `run`; None off a Jetson or when it fails."""
    return parse_nvpmodel(run("nvpmodel", "-q"))


def read_clock_state(run: Run) -> ClockState | None:
    """`jetson_clocks --show` as this user (works as root), else through `sudo -n` (works without
    a password prompt only); None when neither can read it."""
    for argv in (("jetson_clocks", "--show"), ("sudo", "-n", "jetson_clocks", "--show")):
        state = parse_jetson_clocks(run(*argv))
        if state is not None:
            return state
    return None
