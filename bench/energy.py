"""Energy per image, where the machine exposes it: RAPL on x86, tegrastats on a Jetson.

A meter is started just before a benchmark's timed runs and stopped just after; what it
read is an `EnergyReading` (millijoules over the window, or None with the reason). What
each source covers differs, and the reading says which it was:

- RAPL (`/sys/class/powercap/intel-rapl:N/energy_uj`, Intel and AMD since Zen): the CPU
  packages' cumulative energy counters, read before and after; a counter that wrapped
  (at `max_energy_range_uj`) is unwrapped once. The package only: not the memory, not
  the rest of the machine, and every process on it, so a shared machine inflates it.
  Since Linux 5.10 the counters are readable by root only; then the reading is None,
  saying so.
- tegrastats (JetPack): run in the background at a 100 ms interval; each line gives the
  instantaneous power of the module's rails. The total is `VDD_IN` (Orin Nano / NX,
  Xavier NX) or `POM_5V_IN` (Nano, TX2); a board without an input rail (AGX Orin) gets the
  sum of its rails, as jetson-stats' jtop computes it. Energy = the mean power of the
  samples taken during the window x its length: the whole board's power, idle included.

Nothing here needs a package: files and one command, both injectable for tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from artifacts.tegra import read_text

POWERCAP = Path("/sys/class/powercap")
TEGRASTATS = ("tegrastats", "--interval", "100")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")  # the module's input, where the board measures it
# "NAME 1234mW/1200mW" (JetPack 5 and 6) or "NAME 1234/1200" (JetPack 4): instantaneous/average.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


@dataclass(frozen=True)
class EnergyReading:
    """What a meter read over one window; `energy_mj` None with `note` saying why."""

    energy_mj: float | None
    seconds: float
    source: str = ""  # e.g. "RAPL package-0", "tegrastats VDD_IN"
    note: str = ""

    @property
    def avg_power_w(self) -> float | None:
        return self.energy_mj / 1e3 / self.seconds if self.energy_mj is not None and self.seconds > 0 else None

    def per_image(self, images: int) -> float | None:
        return self.energy_mj / images if self.energy_mj is not None and images > 0 else None


class EnergyMeter:
    """Start before the timed runs, stop right after: `stop` returns the window's reading."""

    source = ""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> EnergyReading:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - only a meter with a background process has work here
        """Release what `start` started (safe to call twice, or without `start`)."""


class NoMeter(EnergyMeter):
    """This machine exposes no energy counter; every reading says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def start(self) -> None:
        pass

    def stop(self) -> EnergyReading:
        return EnergyReading(None, 0.0, note=self.reason)


# --- RAPL -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplDomain:
    name: str  # "package-0"
    counter: Path  # .../energy_uj
    max_uj: int  # the counter wraps to 0 after this


def rapl_domains(root: Path = POWERCAP) -> list[RaplDomain]:
    """The top-level RAPL zones (intel-rapl:0, not its sub-zones intel-rapl:0:0): the CPU
    packages; a "psys" zone (the platform, which contains the packages) is left out."""
    found = []
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") != 1 or not (zone / "energy_uj").exists():
            continue
        name = read_text(zone / "name").strip() or zone.name
        try:
            max_uj = int(read_text(zone / "max_energy_range_uj").strip() or 0)
        except ValueError:
            max_uj = 0
        found.append(RaplDomain(name, zone / "energy_uj", max_uj))
    packages = [d for d in found if d.name.startswith("package")]
    return packages or [d for d in found if d.name != "psys"]


def unwrap(before: int, after: int, max_uj: int) -> int:
    """µJ between two readings of a counter that wraps to 0 past `max_uj` (at most once)."""
    return after - before if after >= before else after + max_uj - before


class RaplMeter(EnergyMeter):
    def __init__(self, domains: Sequence[RaplDomain], clock: Callable[[], float] = time.perf_counter) -> None:
        self.domains, self._clock = list(domains), clock
        self.source = "RAPL " + "+".join(d.name for d in self.domains)
        self._before: list[int] = []
        self._start = 0.0

    def _read(self) -> list[int]:
        return [int(d.counter.read_text(encoding="utf-8")) for d in self.domains]

    def start(self) -> None:
        self._before, self._start = self._read(), self._clock()

    def stop(self) -> EnergyReading:
        after, seconds = self._read(), self._clock() - self._start
        uj = sum(unwrap(b, a, d.max_uj) for b, a, d in zip(self._before, after, self.domains, strict=True))
        return EnergyReading(uj / 1e3, seconds, self.source)


# --- tegrastats -----------------------------------------------------------------------


def rail_powers(line: str) -> dict[str, int]:
    """Instantaneous mW of each rail on one tegrastats line ("NC" pins left out)."""
    return {name: int(now) for name, now, _avg in _RAIL.findall(line) if name != "NC"}


def total_power(line: str) -> tuple[str, int] | None:
    """(what was taken, mW): the input rail where there is one, else the sum of the rails."""
    rails = rail_powers(line)
    for name in TOTAL_RAILS:
        if name in rails:
            return name, rails[name]
    if not rails:
        return None
    return "+".join(rails), sum(rails.values())


def window_energy(samples: Sequence[tuple[float, int]], start: float, stop: float,
                  interval: float) -> tuple[float, int] | None:
    """(mJ, samples used) over [start, stop] from (arrival time, mW) samples.

    A sample reports the power when it was printed; the samples that arrived during the
    window, and the first one within an interval after it (it covers the window's last
    part), give the mean power, times the window's length.
    """
    inside = [mw for t, mw in samples if start < t <= stop + interval]
    if not inside:
        return None
    return sum(inside) / len(inside) * (stop - start), len(inside)


class TegrastatsMeter(EnergyMeter):
    """tegrastats in the background while the timed runs go; lines are read as printed."""

    def __init__(self, command: Sequence[str] = TEGRASTATS, interval: float = 0.1,
                 clock: Callable[[], float] = time.perf_counter, first_line_s: float = 3.0) -> None:
        self.command, self.interval, self._clock, self._first_line_s = list(command), interval, clock, first_line_s
        self.source = "tegrastats"
        self.samples: list[tuple[float, int]] = []
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._got = threading.Condition()
        self._start = 0.0
        self._error = ""

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            total = total_power(line)
            if total is None:
                continue
            with self._got:
                self.source = f"tegrastats {total[0]}"
                self.samples.append((self._clock(), total[1]))
                self._got.notify_all()

    def _wait(self, count: int, seconds: float) -> bool:
        with self._got:
            return self._got.wait_for(lambda: len(self.samples) >= count, timeout=seconds)

    def start(self) -> None:
        self.samples, self._error = [], ""
        try:
            self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                             text=True, bufsize=1)
        except OSError as exc:
            self._error = f"{self.command[0]} did not start ({exc.strerror or exc})"
            return
        self._thread = threading.Thread(target=self._read, args=(self._process,), daemon=True)
        self._thread.start()
        if not self._wait(1, self._first_line_s):  # the sampler is live before the window opens
            self._error = f"{self.command[0]} printed no power line in {self._first_line_s:.0f} s"
        self._start = self._clock()

    def stop(self) -> EnergyReading:
        stop = self._clock()
        if not self._error:
            with self._got:
                upto = sum(1 for t, _ in self.samples if t <= stop)
            self._wait(upto + 1, 3 * self.interval + 1.0)  # one sample past the window
        self.close()
        if self._error:
            return EnergyReading(None, stop - self._start, self.source, self._error)
        with self._got:
            got = window_energy(self.samples, self._start, stop, self.interval)
        if got is None:
            return EnergyReading(None, stop - self._start, self.source, "no tegrastats sample during the timed runs")
        return EnergyReading(got[0], stop - self._start, self.source)

    def close(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def find_meter(powercap: Path = POWERCAP, tegrastats: str = TEGRASTATS[0]) -> EnergyMeter:
    """RAPL where its counters can be read, else tegrastats where it is installed, else a
    `NoMeter` that says what is missing."""
    domains = rapl_domains(powercap)
    if domains:
        try:
            int(domains[0].counter.read_text(encoding="utf-8"))
        except PermissionError:
            rapl = (f"RAPL counters exist but {domains[0].counter} is readable by root only (Linux 5.10 and "
                    "later); run as root or make it readable")
        except (OSError, ValueError) as exc:
            rapl = f"RAPL counter {domains[0].counter} cannot be read ({exc})"
        else:
            return RaplMeter(domains)
    else:
        rapl = f"no RAPL counters ({powercap}/intel-rapl:*)"
    if shutil.which(tegrastats):
        return TegrastatsMeter((tegrastats, *TEGRASTATS[1:]))
    return NoMeter(f"{rapl} and no tegrastats (a Jetson's)")
