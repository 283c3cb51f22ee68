"""Is this machine a Jetson, and how much memory do its CPU and GPU share?

Read from the files Jetson Linux has, no tool needed: the device-tree model
("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"), the L4T release
file, and /proc/meminfo. `root` lets tests point at a fake file tree.
"""

from __future__ import annotations

import re
from pathlib import Path

MODEL = "proc/device-tree/model"
L4T_RELEASE = "etc/nv_tegra_release"
MEMINFO = "proc/meminfo"


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def jetson_model(root: Path = Path("/")) -> str | None:
    """The board's name on a Jetson ("Jetson" when only the L4T release file says so); None elsewhere."""
    model = _read(root / MODEL).replace("\x00", "").strip()
    if "jetson" in model.lower() or "tegra" in model.lower():
        return model
    if (root / L4T_RELEASE).is_file():
        return model or "Jetson"
    return None


def memory_total_bytes(root: Path = Path("/")) -> int | None:
    """MemTotal from /proc/meminfo (on a Jetson, the memory the CPU and the GPU share)."""
    found = re.search(r"^MemTotal:\s+(\d+)\s*kB", _read(root / MEMINFO), re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None
