"""pyproject.toml installs on a Jetson: NVIDIA's JetPack torch wheels (pre-releases) satisfy the
torch bound, CI's torch still does, and the tensorrt extra never pulls a pip TensorRT onto a Jetson."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

# Python 3.10 (JetPack 6's) has no tomllib: there this module skips, saying so; CI (3.11) runs it.
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs tomllib (Python 3.11+)")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

# NVIDIA's CUDA wheels for JetPack 6 (2.5.0a0 with its local label, as pip reports it) and CI's CPU torch.
JETSON_TORCH = ["2.5.0a0+872d972e41.nv24.08", "2.6.0rc1"]
CI_TORCH = "2.13.0"
# `python -c "import packaging.markers as m; print(m.default_environment())"` on a Jetson, the keys
# a marker can name: aarch64 Linux, JetPack 6's Python 3.10.
JETSON_ENV = {"platform_machine": "aarch64", "sys_platform": "linux", "platform_system": "Linux",
              "os_name": "posix", "python_version": "3.10", "python_full_version": "3.10.12",
              "implementation_name": "cpython", "platform_python_implementation": "CPython"}
X86_GPU_SERVER = dict(JETSON_ENV, platform_machine="x86_64", python_version="3.11", python_full_version="3.11.7")


def requirement(name: str, extra: str | None = None) -> Requirement:
    entries = PROJECT["optional-dependencies"][extra] if extra else PROJECT["dependencies"]
    found = [Requirement(r) for r in entries if Requirement(r).name == name]
    assert len(found) == 1, f"{name} is listed {len(found)} times"
    return found[0]


@pytest.mark.parametrize("version", [*JETSON_TORCH, CI_TORCH])
def test_torch_bound_admits_jetpack_wheels_and_ci_torch(version: str) -> None:
    spec = requirement("torch").specifier
    # As the specifier decides by itself (a fresh install), and as pip checks an already
    # installed version (resolvelib: `specifier.contains(version, prereleases=True)`).
    assert spec.contains(version), f"{spec} refuses torch {version}"
    assert spec.contains(version, prereleases=True)


def test_torch_bound_keeps_its_upper_bound() -> None:
    spec = requirement("torch").specifier
    assert not spec.contains("2.14.0") and not spec.contains("2.14.0a0", prereleases=True)


def test_pips_own_packaging_agrees() -> None:
    """pip vendors its own (older) packaging: the installed JetPack torch must pass its check too."""
    vendored = pytest.importorskip("pip._vendor.packaging.specifiers")
    spec = vendored.SpecifierSet(str(requirement("torch").specifier))
    assert all(spec.contains(v, prereleases=True) for v in [*JETSON_TORCH, CI_TORCH])


def test_a_plain_bound_would_refuse_the_jetpack_wheels() -> None:
    """Why the bound names 2.5.0a0: '>=2.5' excludes 2.5.0a0 (it sorts before 2.5) even when
    pre-releases are allowed, so the check above is not trivially true."""
    assert not SpecifierSet(">=2.5,<2.14").contains(JETSON_TORCH[0], prereleases=True)
    assert not SpecifierSet(">=2.6,<2.14").contains(JETSON_TORCH[1], prereleases=True)


def test_tensorrt_extra_installs_nothing_on_a_jetson() -> None:
    marker = requirement("tensorrt", "tensorrt").marker
    assert isinstance(marker, Marker)
    assert not marker.evaluate(JETSON_ENV)  # JetPack's own TensorRT 10.3, through --system-site-packages
    assert marker.evaluate(X86_GPU_SERVER)


def test_tensorrt_extra_stays_below_tensorrt_11() -> None:
    """PyPI's TensorRT 11 is built for CUDA 13 and drops the builder flags `--typing weak` uses."""
    spec = requirement("tensorrt", "tensorrt").specifier
    assert spec.contains("10.3.0") and spec.contains("10.13.3.9")
    assert not spec.contains("11.0.0") and not spec.contains("11.4.0.1")
