"""Importing the optional back-ends (onnxruntime, OpenVINO, TensorRT, CUDA through torch).

Every layer that touches a back-end library (converters, runtimes, benchmarks) imports it
through these functions, so a missing one fails the same way everywhere: one
`BackendUnavailableError` line that says what to install. Nothing here imports a back-end
at module level.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from .errors import GlnetExportError


class BackendUnavailableError(GlnetExportError):
    """The back-end's library is not installed (the message says what to install)."""


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from None
    return onnxruntime


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise BackendUnavailableError("OpenVINO is not installed: pip install 'glnet-export[openvino]'") from None
    return openvino


TRT_MISSING = ("TensorRT is not installed here (it comes with JetPack on a Jetson, or "
               "pip install 'glnet-export[tensorrt]' from NVIDIA's index)")


def tensorrt_available() -> bool:
    """True when the real TensorRT imports (the `tensorrt-stubs` package alone makes a bare namespace)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import tensorrt
    except Exception:  # noqa: BLE001 - a broken install (no libnvinfer) is "not available"
        return False
    return hasattr(tensorrt, "Builder")


def require_tensorrt(hint: str = "") -> str:
    """The installed TensorRT version, or BackendUnavailableError with what to install."""
    if not tensorrt_available():
        raise BackendUnavailableError(TRT_MISSING + (f"; {hint}" if hint else ""))
    import tensorrt as trt

    return trt.__version__


def cuda_device(device: str = "cuda") -> tuple[str, str, int]:
    """(GPU name, compute capability "8.7", index) of `device` ("cuda", "cuda:N"), via torch.cuda."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT needs an NVIDIA GPU and PyTorch built with CUDA (torch.cuda is not "
                                      "available here; on a Jetson install NVIDIA's PyTorch wheel for JetPack)")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if not 0 <= index < torch.cuda.device_count():
        raise BackendUnavailableError(f"no GPU {device} (this machine has {torch.cuda.device_count()})")
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}", index
