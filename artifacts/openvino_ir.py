"""Where an OpenVINO IR keeps glnet-export's metadata: its rt_info section.

Written by the converter (`export.openvino`), read by the runtime and the Triton writer;
the key and the reading live here so that both sides agree by construction.
"""

from __future__ import annotations

import json
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


BLOCK_OUTPUTS_KEY = "block_outputs"  # in the same section: block -> where its output is in the IR


def write_ir_block_outputs(model: Any, outputs: dict[str, tuple[str, int, str]]) -> None:
    """Record where each GLNet block's output is (block -> (producing op's friendly name, its
    output index, the tensor's name)), for `glnet-export debug-precision`; the ops keep the
    ONNX file's node and tensor names (artifacts.onnx_blocks.block_outputs)."""
    model.set_rt_info(json.dumps({block: list(where) for block, where in outputs.items()}),
                      [RT_INFO_KEY, BLOCK_OUTPUTS_KEY])


def read_ir_block_outputs(model: Any) -> dict[str, tuple[str, int, str]]:
    """What `write_ir_block_outputs` stored, in network order; {} for an IR without it."""
    if not model.has_rt_info([RT_INFO_KEY, BLOCK_OUTPUTS_KEY]):
        return {}
    try:
        raw = json.loads(model.get_rt_info([RT_INFO_KEY, BLOCK_OUTPUTS_KEY]).astype(str))
        return {str(block): (str(node), int(index), str(tensor)) for block, (node, index, tensor) in raw.items()}
    except (ValueError, TypeError, AttributeError):
        return {}
