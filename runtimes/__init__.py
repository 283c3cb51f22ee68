"""One inference interface over PyTorch, onnxruntime, OpenVINO and TensorRT.

Back-end modules import their heavy library only when used, so `import runtimes` stays
cheap and a missing optional back-end fails only when asked for, with an install hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import BackendUnavailableError, Runner, RuntimeInputError, TensorSpec


def load(path: str | Path, device: str = "cpu", threads: int | None = None, **kwargs: Any) -> Runner:
    """A runner for the artifact at `path`, the back-end chosen by the file type."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        from .onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, device=device, threads=threads)
    raise RuntimeInputError(f"{path}: unsupported artifact type {suffix!r}")


__all__ = ["BackendUnavailableError", "Runner", "RuntimeInputError", "TensorSpec", "load"]
