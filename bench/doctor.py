"""`glnet-export doctor`: what this machine lacks for glnet-export, one check per line, each
with the command that fixes it.

Every input is injectable (`DoctorEnv`: the files read, the command runner, the torch and
TensorRT probes, the package-version lookup), so the tests run the doctor on a Jetson made
of recorded outputs as well as on the machine they run on. A check fails ("fail") only when
it blocks what glnet-export is for; "warn" is worth fixing before timing anything; "info"
is a fact (not a Jetson, an optional back-end absent).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from artifacts.tegra import L4TRelease, meminfo_bytes, read_l4t_release, read_text

from .jetson import Run, read_clock_state, read_power_mode
from .sysinfo import _command as run_command  # stdout, or "" when missing, failing or too slow
from .sysinfo import memory_bytes

# Not measured (TensorRT cannot run on our machines): the builder holds the network, its
# weights in each precision it tries and the tactics' workspace; on a Jetson the GPU takes
# all of that from the same RAM. Below this, expect an engine build of glnet_4g to be killed.
BUILD_MEMORY_GIB = 2.0
MIN_TENSORRT = 10  # what export/tensorrt.py and runtimes/tensorrt.py are written for (JetPack 6 has 10.3)
JETSON_TORCH = "install NVIDIA's PyTorch wheel for your JetPack (docs/tensorrt-jetson.md, 'Install on a Jetson')"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | info
    found: str  # what was found, one line
    fix: str = ""  # the command or step that fixes it ("" when nothing to do)


@dataclass
class DoctorReport:
    checks: list[Check]
    jetson: str = ""  # "L4T R36.4.3 (JetPack 6.2)" on a Jetson

    @property
    def blocking(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.blocking

    def verdict(self) -> str:
        warnings = sum(c.status == "warn" for c in self.checks)
        if self.ok:
            return "nothing blocks glnet-export here" + (f" ({warnings} warning(s) above)" if warnings else "")
        names = ", ".join(c.name for c in self.blocking)
        return f"{len(self.blocking)} check(s) block glnet-export here: {names}"


@dataclass
class TorchCuda:
    """What PyTorch says about CUDA ("" / None where it has nothing to say)."""

    torch: str = ""  # version; "" when torch does not import
    cuda: str | None = None  # torch.version.cuda: None for a CPU build
    available: bool = False  # torch.cuda.is_available()
    device: str = ""  # the first GPU's name
    error: str = ""


def probe_torch() -> TorchCuda:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install is a finding, not a crash
        return TorchCuda(error=f"{exc.__class__.__name__}: {exc}")
    found = TorchCuda(torch.__version__, torch.version.cuda)
    try:
        found.available = bool(torch.cuda.is_available())
        found.device = torch.cuda.get_device_name(0) if found.available else ""
    except Exception as exc:  # noqa: BLE001 - a driver mismatch raises here
        found.error = f"{exc.__class__.__name__}: {exc}"
    return found


def probe_tensorrt() -> str | None:
    """The TensorRT version that really imports (JetPack's has no pip metadata), or None."""
    from artifacts.backends import BackendUnavailableError, require_tensorrt

    try:
        return require_tensorrt()
    except BackendUnavailableError:
        return None


def distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _venv_config() -> Path | None:
    """This virtual environment's pyvenv.cfg; None outside one."""
    return Path(sys.prefix) / "pyvenv.cfg" if sys.prefix != sys.base_prefix else None


@dataclass
class DoctorEnv:
    nv_tegra_release: Path = Path("/etc/nv_tegra_release")
    meminfo: Path = Path("/proc/meminfo")
    venv_config: Path | None = field(default_factory=_venv_config)
    run: Run = run_command
    torch: Callable[[], TorchCuda] = probe_torch
    tensorrt: Callable[[], str | None] = probe_tensorrt
    version: Callable[[str], str | None] = distribution_version
    cpu_only: bool = False  # TensorRT and CUDA are not needed: their checks inform instead of failing


def hides_system_packages(venv_config: Path | None) -> bool:
    """A virtual environment made without --system-site-packages cannot import JetPack's TensorRT."""
    match = re.search(r"^include-system-site-packages\s*=\s*(\S+)", read_text(venv_config), re.MULTILINE)
    return venv_config is not None and (match is None or match.group(1).lower() != "true")


def check_jetpack(release: L4TRelease | None) -> Check:
    if release is None:
        return Check("jetpack", "info", "not a Jetson (no L4T release in /etc/nv_tegra_release)")
    if release.major < 36:
        return Check("jetpack", "warn", f"{release.describe()}: its TensorRT is older than {MIN_TENSORRT}",
                     "flash JetPack 6 or later (SDK Manager or the SD card image)")
    return Check("jetpack", "ok", release.describe())


def _gpu_needed(env: DoctorEnv) -> str:
    return "info" if env.cpu_only else "fail"


def check_tensorrt(env: DoctorEnv, release: L4TRelease | None) -> Check:
    version = env.tensorrt()
    if version is not None:
        from artifacts.engine_manifest import parse_version

        if parse_version(version)[0] < MIN_TENSORRT:
            return Check("tensorrt", _gpu_needed(env), f"TensorRT {version}: glnet-export needs {MIN_TENSORRT} or "
                         "later", "JetPack 6 or later on a Jetson; pip install 'glnet-export[tensorrt]' elsewhere")
        return Check("tensorrt", "ok", f"TensorRT {version}")
    if release is not None and hides_system_packages(env.venv_config):
        fix = (f"this virtual environment ({env.venv_config.parent if env.venv_config else ''}) hides JetPack's "
               "TensorRT: recreate it with `python3 -m venv --system-site-packages`")
    elif release is not None:
        fix = "`sudo apt install nvidia-jetpack` installs JetPack's TensorRT with its Python module"
    else:
        fix = "pip install 'glnet-export[tensorrt]' (from NVIDIA's index; needs an NVIDIA GPU and driver)"
    return Check("tensorrt", _gpu_needed(env), "TensorRT does not import here", fix)


def check_cuda(env: DoctorEnv, release: L4TRelease | None) -> Check:
    found = env.torch()
    status = _gpu_needed(env)
    if not found.torch:
        return Check("cuda", "fail", f"PyTorch does not import ({found.error})",
                     JETSON_TORCH if release else "pip install torch")
    if found.cuda is None:
        fix = JETSON_TORCH if release else "install a CUDA build of PyTorch (https://pytorch.org/get-started/locally/)"
        return Check("cuda", status, f"torch {found.torch} is a CPU-only build: no CUDA", fix)
    if not found.available:
        why = f": {found.error}" if found.error else ""
        return Check("cuda", status, f"torch {found.torch} (CUDA {found.cuda}) sees no GPU{why}",
                     "check the NVIDIA driver (nvidia-smi; in a container, run it with the NVIDIA runtime)")
    return Check("cuda", "ok", f"torch {found.torch}, CUDA {found.cuda}, GPU {found.device}")


def check_power_mode(env: DoctorEnv) -> Check:
    mode = read_power_mode(env.run)
    if mode is None:
        return Check("power mode", "warn", "`nvpmodel -q` printed no power mode", "sudo nvpmodel -q")
    if mode.unconstrained:
        return Check("power mode", "ok", f"{mode} (no power cap)")
    return Check("power mode", "warn", f"{mode} caps the clocks below the board's fastest mode",
                 "`sudo nvpmodel -q --verbose` lists the modes, `sudo nvpmodel -m ID` sets one (MAXN / MAXN_SUPER)")


def check_clocks(env: DoctorEnv) -> Check:
    state = read_clock_state(env.run)
    if state is None:
        return Check("clocks", "warn", "could not read `jetson_clocks --show` (it needs root)",
                     "sudo jetson_clocks (locks them; `sudo jetson_clocks --show` shows them)")
    if state.locked:
        return Check("clocks", "ok", state.describe())
    return Check("clocks", "warn", state.describe() + ": timings will vary", "sudo jetson_clocks")


def check_memory(env: DoctorEnv) -> Check:
    free, total = meminfo_bytes("MemAvailable", env.meminfo), memory_bytes(env.meminfo)
    if free is None:
        return Check("memory", "info", f"no MemAvailable in {env.meminfo}")
    found = f"{free / 2**30:.1f} GiB available" + (f" of {total / 2**30:.1f} GiB" if total else "")
    if free < BUILD_MEMORY_GIB * 2**30:
        return Check("memory", "warn", f"{found}: an engine build of glnet_4g wants about {BUILD_MEMORY_GIB:.0f} GiB",
                     "close other programs, or cap the builder's workspace (glnet-export tensorrt --workspace 512)")
    return Check("memory", "ok", found)


def check_cpu_backends(env: DoctorEnv) -> list[Check]:
    ort = env.version("onnxruntime") or env.version("onnxruntime-gpu")
    ov = env.version("openvino")
    return [
        Check("onnxruntime", "ok", f"onnxruntime {ort}") if ort else
        Check("onnxruntime", "fail", "onnxruntime is not installed (every export is verified with it)",
              "pip install onnxruntime"),
        Check("openvino", "ok", f"OpenVINO {ov}") if ov else
        Check("openvino", "info", "OpenVINO is not installed (optional CPU back-end)",
              "pip install 'glnet-export[openvino]'"),
    ]


def run_doctor(env: DoctorEnv | None = None) -> DoctorReport:
    env = env or DoctorEnv()
    release = read_l4t_release(env.nv_tegra_release)
    checks = [check_jetpack(release), check_tensorrt(env, release), check_cuda(env, release)]
    if release is not None:  # nvpmodel and jetson_clocks exist on a Jetson only
        checks += [check_power_mode(env), check_clocks(env)]
    checks += [check_memory(env), *check_cpu_backends(env)]
    return DoctorReport(checks, release.describe() if release else "")
