"""One inference interface over PyTorch, onnxruntime, OpenVINO and TensorRT.

Back-end modules import their heavy library only when used, so `import runtimes` stays
cheap and a missing optional back-end fails only when asked for, with an install hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from artifacts.backends import BackendUnavailableError
from artifacts.errors import ArtifactLoadError, GlnetExportError, one_line

from .base import Runner, RuntimeInputError, TensorSpec

SUFFIXES = {".onnx": "onnxruntime", ".ort": "onnxruntime", ".xml": "openvino", ".engine": "tensorrt",
            ".plan": "tensorrt"}


def load(path: str | Path, device: str = "cpu", threads: int | None = None, precision: str | None = None,
         **kwargs: Any) -> Runner:
    """A runner for the artifact at `path`, the back-end chosen by the file type.

    `precision` asks a back-end that picks its own compute precision (OpenVINO) for one;
    the runner's `precision` attribute always says what actually runs. Files run exactly as
    they are: every graph rewrite is an export step (`export.passes`).
    """
    path = Path(path)
    if path.is_dir():
        raise RuntimeInputError(f"{path}: is a folder, not an artifact file")
    backend = SUFFIXES.get(path.suffix.lower())
    if backend is None:
        known = ", ".join(sorted(SUFFIXES))
        raise RuntimeInputError(f"{path}: unsupported artifact type {path.suffix!r} (known: {known})")
    if not path.is_file():
        raise RuntimeInputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ArtifactLoadError(f"{path}: empty file")
    try:
        runner = _runner(path, backend, device, threads, precision, **kwargs)
    except (GlnetExportError, TypeError, AttributeError, NameError, AssertionError):
        raise  # ours, with their own message, or a bug that must not pass for a bad file
    except Exception as exc:  # what the back-end says of a file it cannot parse or compile
        raise ArtifactLoadError(f"{path}: {backend} cannot load it ({one_line(exc)})") from exc
    if backend != "openvino" and precision is not None and precision.lower() != runner.precision:
        # Only OpenVINO chooses a compute precision at load time; the others run what the
        # file stores, and silently ignoring the request would misreport what was measured.
        runner.close()
        raise RuntimeInputError(f"{path}: {backend} runs it in {runner.precision}, as the file stores it; "
                                f"precision {precision!r} can only be asked of an OpenVINO IR")
    return runner


def _runner(path: Path, backend: str, device: str, threads: int | None, precision: str | None,
            **kwargs: Any) -> Runner:
    if backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, device=device, threads=threads)
    if backend == "openvino":
        from .openvino import OpenVinoRunner

        return OpenVinoRunner(path, device=device, threads=threads, precision=precision, **kwargs)
    from .tensorrt import TensorRTRunner

    return TensorRTRunner(path, device=device, **kwargs)


__all__ = ["ArtifactLoadError", "BackendUnavailableError", "Runner", "RuntimeInputError", "TensorSpec",
           "load"]
