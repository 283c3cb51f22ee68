"""Is this machine a Jetson, and how much memory do its CPU and GPU share?

Read from the files Jetson Linux has, no tool needed: the device-tree model
("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"), the L4T release
file, and /proc/meminfo. `root` lets tests point at a fake file tree.

The one reader of system files for every layer: `bench.sysinfo` (the machine a result ran
on), `bench.doctor`, `bench.energy` and `bench.edge` read /proc, /sys and /etc through
`read_text`, `board_model` and `meminfo_bytes` too. Parsing the L4T release's text is
`bench.jetson`'s job (only bench needs the release number; here the file's presence is enough).
"""

from __future__ import annotations

import re
from pathlib import Path

MODEL = "proc/device-tree/model"
L4T_RELEASE = "etc/nv_tegra_release"
MEMINFO = "proc/meminfo"


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


def is_jetson(board: str, l4t_release: str | bool) -> bool:
    """Any ARM board has a device-tree model (a Raspberry Pi, an ARM server): only a Jetson
    names itself so or has an L4T release (`l4t_release`: its line, or whether the file exists)."""
    return bool(l4t_release) or any(word in board.lower() for word in ("jetson", "tegra"))


def meminfo_bytes(key: str, meminfo: Path = Path("/") / MEMINFO) -> int | None:
    """One `KEY: N kB` line of /proc/meminfo in bytes (MemTotal, MemAvailable); None when absent."""
    found = re.search(rf"^{re.escape(key)}:\s+(\d+)\s*kB", read_text(meminfo), re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


def jetson_model(root: Path = Path("/")) -> str | None:
    """The board's name on a Jetson ("Jetson" when only the L4T release file says so); None elsewhere."""
    model = board_model(root / MODEL)
    if not is_jetson(model, (root / L4T_RELEASE).is_file()):
        return None
    return model or "Jetson"


def memory_total_bytes(root: Path = Path("/")) -> int | None:
    """MemTotal from /proc/meminfo (on a Jetson, the memory the CPU and the GPU share)."""
    return meminfo_bytes("MemTotal", root / MEMINFO)
