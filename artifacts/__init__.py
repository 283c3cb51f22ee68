"""What every layer above the model shares about an artifact: its metadata (ONNX
`metadata_props`, an IR's rt_info, a TensorRT engine's manifest), reading and writing the
files atomically, the errors, image preprocessing and labels, and importing the optional
back-ends. Nothing here converts, runs or times a model."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glnet-export")  # pyproject.toml holds the one version number
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
