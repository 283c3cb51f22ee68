"""What a benchmark ran on, recorded in every result file.

Latency numbers mean nothing without the machine: the same artifact is 1.6x faster on a
CPU with AVX512_BF16 (OpenVINO picks bf16 there, FIELD_NOTES trap 5), a Jetson's numbers
depend on its power mode, and a shared machine's on its CPU quota. Everything here is read
from files and commands that exist without extra packages; a field that cannot be read is
left empty rather than guessed.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from artifacts.tegra import board_model, is_jetson, meminfo_bytes, read_l4t_release, read_text

from .jetson import read_clock_state, read_power_mode

LIBRARIES = ("glnet-export", "torch", "numpy", "onnx", "onnxruntime", "openvino", "nncf", "tensorrt")
# CPU features that change which kernels (and precisions) the runtimes pick.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "asimd",
             "asimdhp", "sve")


@dataclass
class GpuInfo:
    name: str
    driver: str = ""
    memory_bytes: int | None = None
    compute_capability: str = ""


@dataclass
class DeviceInfo:
    """The machine a result was measured on (the `device` field of every result file)."""

    hostname: str
    os: str
    python: str
    arch: str
    cpu_model: str
    cpu_cores: int | None  # physical cores, when the OS says
    cpu_logical: int  # logical CPUs this process may use (affinity / container)
    cpu_quota: float | None  # cgroup CPU limit in CPUs, None when unlimited
    cpu_flags: list[str]
    memory_bytes: int | None
    threads: int | None  # threads the benchmark asked the runtimes for (None: their default)
    gpus: list[GpuInfo] = field(default_factory=list)
    board_model: str = ""  # /proc/device-tree/model: "NVIDIA Jetson Orin Nano ..." on a Jetson
    power_mode: str = ""  # Jetson nvpmodel mode, e.g. "15W (0)"
    l4t_release: str = ""  # Jetson Linux release line
    clocks_locked: bool | None = None  # Jetson: `jetson_clocks` holds the clocks at their maximum; None: not a
    # Jetson, or `jetson_clocks --show` unreadable (it needs root)
    libraries: dict[str, str] = field(default_factory=dict)
    collected_at: str = ""
    busy_cpus: float | None = None  # CPUs busy with other work just before measuring (see `busy_cpus`)

    def summary(self) -> str:
        """One line for table titles and comparisons."""
        parts = [self.cpu_model or self.arch]
        cores = f"{self.cpu_cores} cores" if self.cpu_cores else f"{self.cpu_logical} CPUs"
        parts.append(f"{cores}, {self.threads or 'default'} threads")
        if self.memory_bytes:
            parts.append(f"{self.memory_bytes / 2**30:.0f} GiB")
        parts += [f"{g.name} (driver {g.driver or '?'})" for g in self.gpus]
        if self.board_model and self.is_jetson:
            clocks = {True: ", clocks locked", False: ", clocks NOT locked", None: ""}[self.clocks_locked]
            parts.append(self.board_model + (f", power mode {self.power_mode}" if self.power_mode else "") + clocks)
        if self.busy_cpus and self.busy_cpus >= 0.05:  # "0.0 CPUs busy" says nothing
            parts.append(f"{self.busy_cpus:.1f} CPUs busy with other work")
        return "; ".join(parts)

    @property
    def is_jetson(self) -> bool:
        return is_jetson(self.board_model, self.l4t_release)

    def clock_warning(self) -> str:
        """One line for a benchmark on a Jetson whose clocks may scale during the run; "" otherwise."""
        if not self.is_jetson:
            return ""
        if self.clocks_locked is False:
            return ("the Jetson's clocks are not locked: they scale between requests and timings vary; "
                    "run `sudo jetson_clocks` first")
        if self.clocks_locked is None:
            return ("could not tell whether the Jetson's clocks are locked (`jetson_clocks --show` needs root); "
                    "run `sudo jetson_clocks` first for steady timings")
        return ""


def _command(*argv: str, timeout: float = 5.0) -> str:
    """stdout of a command, or "" when it is missing or fails (nvidia-smi without a driver)."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, int | None, list[str]]:
    """(model name, physical cores, notable flags) from /proc/cpuinfo, with portable fallbacks."""
    text = read_text(cpuinfo)
    cores, flags = set(), set()
    for block in text.split("\n\n"):  # one block per logical CPU
        fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines()))
        if "core id" in fields:
            cores.add((fields.get("physical id", ""), fields["core id"]))
        flags.update(fields.get("flags", fields.get("Features", "")).split())  # x86 / ARM
    # x86 says "model name"; ARM boards say "Hardware" or "Model", or nothing at all.
    models = re.findall(r"^(?:model name|Hardware|Model)\s*:\s*(.+)$", text, re.MULTILINE)
    model = models[0].strip() if models else (platform.processor() or platform.machine())
    return model, (len(cores) or None), [f for f in CPU_FLAGS if f in flags]


def cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup v2 CPU limit (cpu.max "quota period"), None when there is none."""
    quota, _, period = read_text(root / "cpu.max").strip().partition(" ")
    if not quota or quota == "max" or not period:
        return None
    try:
        return round(int(quota) / int(period), 2)
    except ValueError:
        return None


def memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    total = meminfo_bytes("MemTotal", meminfo)
    if total is not None:
        return total
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gpu_info() -> list[GpuInfo]:
    """GPUs from nvidia-smi (name, driver, memory); from torch.cuda when nvidia-smi is absent (Jetson)."""
    gpus = []
    text = _command("nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                    "--format=csv,noheader,nounits")
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            mem = int(parts[2]) * 2**20 if len(parts) > 2 and parts[2].isdigit() else None
            gpus.append(GpuInfo(parts[0], parts[1], mem, parts[3] if len(parts) > 3 else ""))
    if gpus:
        return gpus
    try:
        import torch

        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append(GpuInfo(props.name, "", props.total_memory, f"{props.major}.{props.minor}"))
    except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU we can describe"
        pass
    return gpus


def jetson_info(device_tree: Path = Path("/proc/device-tree/model"),
                release: Path = Path("/etc/nv_tegra_release")) -> tuple[str, str, str]:
    """(board model, nvpmodel power mode, L4T release line); empty strings off a Jetson. The
    release is recorded only where `read_l4t_release` parses it, as `artifacts.tegra` decides."""
    mode = read_power_mode(_command)
    l4t = read_l4t_release(release)
    return board_model(device_tree), (str(mode) if mode else ""), (l4t.line if l4t else "")


def _cpu_ticks(stat: Path = Path("/proc/stat")) -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = read_text(stat).split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


class OtherLoad:
    """CPUs kept busy by other processes while a block runs (the machine's busy time minus
    this process's own CPU time, over the wall time); `cpus` is None where unknown.

    On a shared machine this decides whether timings mean anything: PyTorch with 2 threads
    on 2 cores runs up to 50x slower (measured here) while one other process holds a core,
    because its threads wait for each other at every operator.
    """

    def __init__(self) -> None:
        self.cpus: float | None = None

    def __enter__(self) -> OtherLoad:
        self._start = (_cpu_ticks(), sum(os.times()[:2]), time.monotonic())
        return self

    def __exit__(self, *exc: object) -> None:
        ticks, own, wall = _cpu_ticks(), sum(os.times()[:2]), time.monotonic()
        if ticks is None or self._start[0] is None or wall <= self._start[2]:
            return
        busy = ticks[0] - self._start[0][0]
        other = max(0.0, busy - (own - self._start[1])) / (wall - self._start[2])
        # /proc/stat counts in 10 ms ticks: over a short block a fully loaded machine can read
        # a little above its CPU count (2.09 of 2 seen over 0.2 s).
        self.cpus = round(min(other, float(os.cpu_count() or 1)), 2)


def busy_cpus(seconds: float = 1.0) -> float | None:
    """CPUs kept busy by other processes, averaged over `seconds` while this one sleeps."""
    with OtherLoad() as load:
        time.sleep(seconds)
    return load.cpus


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "tensorrt" not in versions:  # JetPack installs TensorRT as a system package, without pip metadata
        from artifacts.backends import tensorrt_available

        if tensorrt_available():
            import tensorrt

            versions["tensorrt"] = tensorrt.__version__
    return versions


def collect_device_info(threads: int | None = None, idle_sample_s: float = 1.0) -> DeviceInfo:
    """Describe this machine; `threads` is what the benchmark asked the runtimes for.

    Takes `idle_sample_s` seconds to measure how busy other processes keep the CPUs (0: skip).
    """
    model, cores, flags = cpu_info()
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        logical = os.cpu_count() or 1
    board, power, l4t = jetson_info()
    clocks = read_clock_state(_command) if is_jetson(board, l4t) else None
    return DeviceInfo(
        hostname=socket.gethostname(), os=platform.platform(), python=platform.python_version(),
        arch=platform.machine(), cpu_model=model, cpu_cores=cores, cpu_logical=logical, cpu_quota=cpu_quota(),
        cpu_flags=flags, memory_bytes=memory_bytes(), threads=threads, gpus=gpu_info(), board_model=board,
        power_mode=power, l4t_release=l4t, clocks_locked=clocks.locked if clocks else None,
        libraries=library_versions(),
        collected_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        busy_cpus=busy_cpus(idle_sample_s) if idle_sample_s > 0 else None,
    )


def device_from_dict(data: dict[str, Any]) -> DeviceInfo:
    """Read back the `device` field of a result file; keys it lacks are left empty, unknown ones ignored."""
    blank: dict[str, Any] = {"hostname": "", "os": "", "python": "", "arch": "", "cpu_model": "", "cpu_cores": None,
                             "cpu_logical": 0, "cpu_quota": None, "cpu_flags": [], "memory_bytes": None,
                             "threads": None}
    known = {k: v for k, v in data.items() if k in DeviceInfo.__dataclass_fields__}
    known["gpus"] = [GpuInfo(**{k: v for k, v in g.items() if k in GpuInfo.__dataclass_fields__})
                     for g in known.get("gpus") or []]
    return DeviceInfo(**{**blank, **known})
