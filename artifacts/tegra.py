"""Is this machine a Jetson, and how much memory do its CPU and GPU share?

Read from the files Jetson Linux has, no tool needed: the device-tree model
("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"), the L4T release
file, and /proc/meminfo. `root` lets tests point at a fake file tree.

The one reader of system files for every layer: `bench.sysinfo` (the machine a result ran
on), `bench.doctor`, `bench.energy` and `bench.edge` read /proc, /sys and /etc through
`read_text`, `board_model` and `meminfo_bytes` too.

Whether this is a Jetson is decided here once, for export (the default TensorRT workspace),
`bench.sysinfo` and `bench.doctor` alike: the device-tree model names a Jetson, or
/etc/nv_tegra_release names a release `parse_nv_tegra_release` can read. A file that exists
but names no release (empty, truncated, another distribution's) is not a Jetson anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MODEL = "proc/device-tree/model"
L4T_RELEASE = "etc/nv_tegra_release"
MEMINFO = "proc/meminfo"

# Jetson Linux release -> JetPack, from NVIDIA's JetPack archive as jetson_stats keeps it
# (rbonghi/jetson_stats jtop/core/jetson_variables.py, NVIDIA_JETPACK) and its pull requests
# #792 (L4T 38.4 is JetPack 7.1) and #881 (L4T 39.2.0 is JetPack 7.2, on Thor and Orin alike);
# OE4T/meta-tegra's "JetPack 7.2 / L4T R39.2.0" update says 7.2 is the first JetPack 7 for Orin.
JETPACK_FOR_L4T = {
    "35.5.0": "5.1.3", "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.2": "6.1 (rev1)", "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "38.2.0": "7.0", "38.4.0": "7.1", "39.2.0": "7.2",
}
# A release the table does not know yet is still placed by its major: R36 is always JetPack 6,
# R38 (Thor only) and R39 JetPack 7. A guessed minor could name the wrong release.
JETPACK_FOR_MAJOR = {32: "4.x", 35: "5.x", 36: "6.x", 38: "7.x", 39: "7.x"}

_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")


@dataclass(frozen=True)
class L4TRelease:
    major: int  # 36
    revision: str  # "4.3"
    line: str  # the file's first line, as written

    @property
    def version(self) -> str:
        """'36.4.3' (a two-part revision gets a .0, as NVIDIA numbers its releases)."""
        rev = self.revision if self.revision.count(".") >= 1 else f"{self.revision}.0"
        return f"{self.major}.{rev}"

    @property
    def jetpack(self) -> str:
        """'6.2', or '6.x' for a release the table does not know; '' for an unknown major."""
        return JETPACK_FOR_L4T.get(self.version, JETPACK_FOR_MAJOR.get(self.major, ""))

    def describe(self) -> str:
        jetpack = f"JetPack {self.jetpack}" if self.jetpack else "JetPack unknown"
        return f"L4T R{self.version} ({jetpack})"


def parse_nv_tegra_release(text: str) -> L4TRelease | None:
    """The release in `/etc/nv_tegra_release` ("# R36 (release), REVISION: 4.3, GCID: ..."), or None."""
    match = _RELEASE.search(text)
    if match is None:
        return None
    line = next((ln for ln in text.splitlines() if _RELEASE.search(ln)), "")
    return L4TRelease(int(match.group(1)), match.group(2), line.lstrip("# ").strip())


def read_text(path: Path | None) -> str:
    """A system file's text; "" when there is no path, or the file is missing or unreadable
    (sysfs and procfs files vary by kernel and board, and some need root)."""
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def board_model(path: Path = Path("/") / MODEL) -> str:
    """The device-tree model, without the NUL the kernel ends it with; "" where there is none."""
    return read_text(path).replace("\x00", "").strip()


def read_l4t_release(path: Path = Path("/") / L4T_RELEASE) -> L4TRelease | None:
    """The L4T release /etc/nv_tegra_release names; None where the file is missing or names none."""
    return parse_nv_tegra_release(read_text(path))


def is_jetson(board: str, l4t_release: str) -> bool:
    """Any ARM board has a device-tree model (a Raspberry Pi, an ARM server): only a Jetson
    names itself so or has an L4T release (`l4t_release`: the parsed release's line, "" where
    `read_l4t_release` found none; a result file keeps only this line)."""
    return bool(l4t_release) or any(word in board.lower() for word in ("jetson", "tegra"))


def meminfo_bytes(key: str, meminfo: Path = Path("/") / MEMINFO) -> int | None:
    """One `KEY: N kB` line of /proc/meminfo in bytes (MemTotal, MemAvailable); None when absent."""
    found = re.search(rf"^{re.escape(key)}:\s+(\d+)\s*kB", read_text(meminfo), re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def jetson_model(root: Path = Path("/")) -> str | None:
    """The board's name on a Jetson ("Jetson" when only the L4T release says so); None elsewhere."""
    model = board_model(root / MODEL)
    release = read_l4t_release(root / L4T_RELEASE)
    if not is_jetson(model, release.line if release else ""):
        return None
    return model or "Jetson"


def memory_total_bytes(root: Path = Path("/")) -> int | None:
    """MemTotal from /proc/meminfo (on a Jetson, the memory the CPU and the GPU share)."""
    return meminfo_bytes("MemTotal", root / MEMINFO)
