"""ONNX (or a PyTorch GLNet, through ONNX) -> OpenVINO IR in fp32, fp16 or int8, then proof.

`ov.convert_model` on the ONNX file keeps its dynamic axes (converting the PyTorch module
directly fails on the whole GLNet: FIELD_NOTES table). The IR carries the ONNX file's
ArtifactMetadata in its rt_info, with `precision` set to what the IR stores. Verification
pins f32 compute by default, because the CPU plugin would otherwise run bf16 where the CPU
has it (FIELD_NOTES trap 5) and the result would say nothing about the conversion.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifacts.atomic import atomic_outputs, check_writable
from artifacts.backends import import_openvino
from artifacts.calibration import DEFAULT_COUNT, calibration_sizes, load_calibration
from artifacts.errors import ExportError, OptionError, one_line
from artifacts.metadata import ArtifactMetadata
from artifacts.onnx_blocks import BlockMapError, block_nodes, block_outputs, node_blocks, resolve_blocks
from artifacts.onnx_file import read_onnx
from artifacts.openvino_ir import write_ir_block_outputs, write_ir_metadata

from .int8_budget import AccuracyBudget, load_validation
from .onnxruntime import metadata_of, refuse_runtime_only
from .openvino_int8 import block_ops, count_fake_quantize, quantization_record, quantize_int8
from .openvino_int8_budget import quantize_int8_within_budget
from .passes.openvino_fold import fold_residual_depthwise_ov

PRECISIONS = ("fp32", "fp16", "int8")
COMPUTES = ("auto", "f32")
Progress = Callable[[str], None]


@dataclass
class OpenVinoOptions:
    precision: str = "fp32"  # what the IR stores: fp32 | fp16 (weights) | int8 (NNCF)
    calib_dir: Path | None = None  # int8: a folder of images
    calib_count: int = DEFAULT_COUNT  # int8: at most this many images (fewer if the folder has fewer)
    glmix_float: bool = True  # int8: keep GLMix's normalisations, softmaxes and logits MatMul in float
    keep_float: Sequence[str] = ()  # int8: blocks (checkpoint-layout names) to leave in float
    budget: AccuracyBudget | None = None  # int8: --max-drop, NNCF's accuracy control (export.openvino_int8_budget)
    int8_depthwise: bool = True  # int8: quantize the depthwise convolutions too (False: they stay float)
    # The compute precision the IR is built for. "auto": the device's own choice (bf16 on
    # CPUs with AVX512_BF16), graph as converted. "f32": the residual depthwise convolutions
    # are folded into their kernels (about 3% faster in f32, but the identity would round
    # in a bf16 weight: export.passes.residual_fold) and the metadata asks for f32.
    compute: str = "auto"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise OptionError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.compute not in COMPUTES:
            raise OptionError(f"--compute must be one of {', '.join(COMPUTES)}, not {self.compute!r}")
        if self.precision == "int8" and self.calib_dir is None:
            raise OptionError("--precision int8 needs --calib DIR: a folder of representative images")
        if self.calib_count < 1:
            raise OptionError(f"--calib-count must be >= 1, not {self.calib_count}")
        if self.keep_float and self.precision != "int8":
            raise OptionError("--keep-float is for --precision int8: an fp32 or fp16 IR has nothing quantized to "
                              "keep out of int8 (its compute precision is the device's)")
        if self.budget is not None:
            if self.precision != "int8":
                raise OptionError("--max-drop is for --precision int8: it bounds what int8 loses against fp32")
            self.budget.validate()


@dataclass
class OpenVinoResult:
    xml: Path
    bin: Path
    metadata: ArtifactMetadata
    precision: str  # what the IR stores
    xml_bytes: int
    bin_bytes: int
    nodes: int
    int8_nodes: int  # FakeQuantize nodes
    kept_float: list[str] = field(default_factory=list)  # int8: nodes left in float on purpose
    calib_images: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    passes: dict[str, int] = field(default_factory=dict)  # export.passes rewrites in the IR

    @property
    def path(self) -> Path:  # what every converter's result names its file
        return self.xml


def _onnx_block_map(proto: Any, onnx_path: Path, required: bool) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The ONNX file's block map, computed once per conversion: block -> its nodes, and block
    -> the tensor of its output; both {} for a file without one, unless `required` (the
    blocks --keep-float names must exist: BlockMapError naming the file)."""
    try:
        blocks = node_blocks(proto, onnx_path)
    except BlockMapError:
        if required:
            raise
        return {}, {}
    return block_nodes(proto, blocks=blocks), block_outputs(proto, blocks=blocks)


def _ir_block_outputs(proto: Any, outputs: dict[str, str]) -> dict[str, tuple[str, int, str]]:
    """Block -> (ONNX node, output index, tensor) of each block's `outputs` tensor."""
    made = {out: (node.name, i) for node in proto.graph.node for i, out in enumerate(node.output)}
    return {block: (*made[tensor], tensor) for block, tensor in outputs.items()}


def read_onnx_metadata(onnx_path: Path, proto: Any = None) -> ArtifactMetadata:
    meta = metadata_of(proto if proto is not None else read_onnx(onnx_path, load_external_data=False), onnx_path)
    refuse_runtime_only(meta, onnx_path, "openvino")
    return meta


def bin_path(xml: Path) -> Path:
    # OpenVINO finds the weights by the same-stem convention; the .xml does not name them.
    return xml.with_suffix(".bin")


def _save_ir(model: Any, xml: Path, compress_to_fp16: bool) -> None:
    import_openvino().save_model(model, str(xml), compress_to_fp16=compress_to_fp16)


def write_ir(model: Any, xml: Path, compress_to_fp16: bool) -> None:
    """Save atomically: into a private folder beside `xml`, then rename .bin, then .xml.

    `ov.save_model` writes the .bin next to the .xml with the same stem, so it saves
    under the final file name in a temporary folder of the same file system; the two
    files are then moved onto `atomic_outputs`' temporary names and renamed into place.
    """
    staging = Path(tempfile.mkdtemp(prefix=f".{xml.name}.", suffix=".tmp", dir=xml.parent))
    try:
        with atomic_outputs(xml, bin_path(xml)) as (temp_xml, temp_bin):
            _save_ir(model, staging / xml.name, compress_to_fp16)
            os.replace(staging / bin_path(xml).name, temp_bin)
            os.replace(staging / xml.name, temp_xml)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert_openvino(
    onnx_path: str | Path,
    output_xml: str | Path,
    options: OpenVinoOptions | None = None,
    progress: Progress | None = None,
) -> OpenVinoResult:
    """Convert a glnet-export ONNX file to an IR at `output_xml` (+ the .bin beside it)."""
    options = options or OpenVinoOptions()
    options.validate()
    onnx_path, xml = Path(onnx_path), Path(output_xml)
    if xml.suffix.lower() != ".xml":
        raise OptionError(f"{xml}: an OpenVINO IR file name must end in .xml")
    check_writable(xml)
    check_writable(bin_path(xml))
    say = progress or (lambda _msg: None)
    start = time.perf_counter()
    proto = read_onnx(onnx_path, load_external_data=False)  # the graph: metadata and block map
    meta = read_onnx_metadata(onnx_path, proto)
    onnx_blocks, onnx_block_outputs = _onnx_block_map(proto, onnx_path, required=bool(options.keep_float))
    kept_blocks = resolve_blocks(options.keep_float, list(onnx_blocks))  # before minutes of work
    calib = None
    if options.precision == "int8":  # read the images before minutes of work, to fail early
        assert options.calib_dir is not None
        say(f"reading calibration images from {options.calib_dir}")
        calib = load_calibration(options.calib_dir, meta, count=options.calib_count, sizes=calibration_sizes(meta))
    validation = load_validation(options.budget, meta, options.calib_dir) if options.budget else None

    ov = import_openvino()
    say(f"converting {onnx_path} with openvino.convert_model")
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise ExportError(f"openvino.convert_model failed: {one_line(exc)}") from exc
    notes: list[str] = []
    kept: list[str] = []
    quantization = None
    if calib is not None:
        say(f"quantizing to int8 with NNCF on {len(calib)} images")
        # Block -> its ops: the --keep-float blocks' ops stay float, NNCF's reverted ops are named by block.
        ops = block_ops(model, onnx_blocks) if onnx_blocks and (kept_blocks or validation is not None) else {}
        in_blocks = [name for block in kept_blocks for name in ops[block]]
        check = None
        if validation is not None:
            assert options.budget is not None
            model, sensitive, check = quantize_int8_within_budget(
                model, calib.samples, validation, options.budget, glmix_float=options.glmix_float,
                depthwise=options.int8_depthwise, keep_float=in_blocks, compute=options.compute,
                op_blocks={op: block for block, names in ops.items() for op in names}, progress=say)
        else:
            model, sensitive = quantize_int8(model, calib.samples, glmix_float=options.glmix_float,
                                             depthwise=options.int8_depthwise, keep_float=in_blocks)
        quantization = quantization_record(model, sensitive, options.glmix_float, len(calib),
                                           depthwise=options.int8_depthwise, blocks=kept_blocks)
        quantization = dataclasses.replace(quantization, budget=check)
        kept = sensitive.names + [n for n in in_blocks if n not in sensitive.names]
        if check is not None and check.float_ops:  # what NNCF reverted to meet --max-drop
            kept += [n for n in check.float_ops if n not in kept]
        if options.glmix_float and not sensitive.logits_matmuls:
            notes.append("found no GLMix clustering nodes to keep in float (graph layout changed?)")
        if calib.skipped:
            notes.append(f"skipped {len(calib.skipped)} unreadable calibration file(s), e.g. {calib.skipped[0]}")
        if len(calib) < 50:
            notes.append(f"only {len(calib)} calibration images; 100-300 give steadier ranges")

    passes: dict[str, int] = {}
    if options.compute == "f32":
        if options.precision == "fp32":
            say("folding the residual depthwise convolutions (for f32 compute)")
            passes["residual_fold"] = fold_residual_depthwise_ov(model)
        else:  # fp16 weights would round the folded 1 + w; int8 kernels are quantized
            notes.append(f"--compute f32 with {options.precision} weights: the residual convolutions stay unfolded")
    meta = dataclasses.replace(meta, precision=options.precision, target="openvino",
                               compute_precision="f32" if options.compute == "f32" else "", graph_passes=passes,
                               quantization=quantization, kept_float=kept_blocks)
    write_ir_metadata(model, meta)
    write_ir_block_outputs(model, _ir_block_outputs(proto, onnx_block_outputs))
    say(f"writing {xml} and {bin_path(xml).name}")
    # int8: keep the float parts' weights fp32 (quantized weights become int8 on save anyway).
    write_ir(model, xml, compress_to_fp16=options.precision == "fp16")
    return OpenVinoResult(
        xml=xml, bin=bin_path(xml), metadata=meta, precision=options.precision,
        xml_bytes=xml.stat().st_size, bin_bytes=bin_path(xml).stat().st_size,
        nodes=len(model.get_ordered_ops()), int8_nodes=count_fake_quantize(model), kept_float=kept,
        calib_images=len(calib) if calib else 0,
        seconds=time.perf_counter() - start, notes=notes, passes=passes,
    )
