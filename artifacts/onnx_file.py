"""Reading and writing ONNX files: one clear error for a file that is not one, atomic saves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import atomic_outputs
from .errors import ArtifactLoadError, one_line

if TYPE_CHECKING:
    import onnx

    from .metadata import ArtifactMetadata

PROTOBUF_LIMIT = 2**31 - 1  # above this the weights must go to a side file


def read_onnx(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """The model in `path`; ArtifactLoadError (one line) if it is missing, empty or not ONNX."""
    import onnx

    path = Path(path)
    if path.is_dir():
        raise ArtifactLoadError(f"{path}: is a folder, not an ONNX file")
    if not path.is_file():
        raise ArtifactLoadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ArtifactLoadError(f"{path}: empty file")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf's DecodeError, a missing external-data file, ...
        raise ArtifactLoadError(f"{path}: not a readable ONNX file ({one_line(exc)})") from exc
    if not model.graph.node:
        raise ArtifactLoadError(f"{path}: not a readable ONNX file (no graph in it)")
    return model


def set_metadata(proto: onnx.ModelProto, meta: ArtifactMetadata) -> None:
    """Replace `proto`'s metadata_props with `meta` (one key per field)."""
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)


def save_onnx(proto: onnx.ModelProto, output: Path) -> None:
    """Save atomically, weights inside the file unless protobuf's 2 GB limit forbids it."""
    import onnx

    with atomic_outputs(output) as (temp,):
        if proto.ByteSize() < PROTOBUF_LIMIT:
            onnx.save_model(proto, temp)
        else:  # pragma: no cover - no GLNet variant is this large
            data = output.with_suffix(".onnx.data")
            onnx.save_model(proto, temp, save_as_external_data=True, location=data.name)
