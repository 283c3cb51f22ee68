"""The lazy-import promise, checked rather than hoped: importing the packages and the CLI
pulls in no heavy or optional back-end, and every submodule imports without them running."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

HEAVY = ["torch", "onnx", "onnxruntime", "onnxsim", "openvino", "nncf", "tensorrt", "ray", "tritonclient",
         "matplotlib", "sklearn", "skimage"]
PACKAGES = ["glnet", "artifacts", "export", "runtimes", "verification", "bench", "serving", "glnet_export"]


def test_cli_and_packages_import_no_heavy_module() -> None:
    code = (
        "import sys, artifacts, runtimes, export, export.formats, verification, bench, serving, glnet_export.cli\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"imported eagerly: {out.strip()}"


OPTIONAL = ["openvino", "nncf", "tensorrt", "ray", "tritonclient", "matplotlib"]


def test_every_submodule_imports_without_the_optional_back_ends() -> None:
    # A None entry in sys.modules makes `import openvino` raise ImportError, as on a
    # machine without it. Every module must still import (back-ends load inside functions),
    # except a module that *is* an optional application (serving.ray_app), which may refuse
    # with the one-line install hint, never with a bare ImportError. One process walks
    # every package: torch and onnx are imported once, not once per package.
    code = (
        "import importlib, pkgutil, sys\n"
        f"for m in {OPTIONAL!r}: sys.modules[m] = None\n"
        "from artifacts.backends import BackendUnavailableError\n"
        f"for package in {PACKAGES!r}:\n"
        "    pkg = importlib.import_module(package)\n"
        "    names = [i.name for i in pkgutil.walk_packages(pkg.__path__, prefix=package + '.')]\n"
        "    for name in names:\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except BackendUnavailableError as exc:\n"
        "            assert name == 'serving.ray_app' and 'pip install' in str(exc), (name, str(exc))\n"
        "        except Exception as exc:\n"
        "            raise SystemExit(f'{name}: {exc.__class__.__name__}: {exc}')\n"
        "    print(package, len(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1:]
    counts = dict(line.split() for line in result.stdout.splitlines())
    empty = [p for p in PACKAGES if int(counts.get(p, 0)) == 0]
    assert not empty, f"no submodules to check in {empty}?"


# What the test suite itself runs for real. Tests of these back-ends skip when the package is
# missing (a user may install the tool without them); this check is what makes a missing or
# broken dev install fail loudly instead of turning those tests into quiet skips.
# tensorrt_stubs: not an extra (the README's test command installs it with --no-deps), but
# without it the TensorRT type checks would pass against Any.
DEV_EXTRAS = ["openvino", "nncf", "sklearn", "skimage", "matplotlib", "ray", "tritonclient.grpc", "mypy", "ruff",
              "tensorrt_stubs"]


@pytest.mark.parametrize("module", DEV_EXTRAS)
def test_the_dev_extras_are_installed(module: str) -> None:
    importlib.import_module(module)
