"""Where an OpenVINO IR keeps glnet-export's metadata: its rt_info section.

Written by the converter (`export.openvino`), read by the runtime and the Triton writer;
the key and the reading live here so that both sides agree by construction.
"""

from __future__ import annotations

from typing import Any

from .metadata import ArtifactMetadata, MetadataError

RT_INFO_KEY = "glnet_export"  # the IR's rt_info section holding ArtifactMetadata's fields


def write_ir_metadata(model: Any, meta: ArtifactMetadata) -> None:
    """Store `meta` in the (in-memory) OpenVINO model's rt_info, to be saved with the IR."""
    for key, value in meta.to_props().items():
        model.set_rt_info(value, [RT_INFO_KEY, key])


def read_ir_metadata(model: Any) -> ArtifactMetadata | None:
    """ArtifactMetadata from the IR's rt_info (written by `export.openvino`), None if absent."""
    if not model.has_rt_info([RT_INFO_KEY]):
        return None
    props = {}
    for key in ArtifactMetadata.__dataclass_fields__:
        if model.has_rt_info([RT_INFO_KEY, key]):
            props[key] = model.get_rt_info([RT_INFO_KEY, key]).astype(str)
    try:
        return ArtifactMetadata.from_props(props)
    except MetadataError:
        return None
