"""Which GLNet block loses precision: a reduced-precision artifact against PyTorch fp32, block by block.

The artifact runs as its back-end runs it, with every block's output made an extra output
of a temporary copy (the file itself is not touched): for ONNX the block-output tensors
(`artifacts.onnx_blocks`) become graph outputs, cast to float32; for an OpenVINO IR the
ports the converter recorded (`artifacts.openvino_ir.read_ir_block_outputs`) are added with
`Model.add_outputs`. PyTorch fp32 gives the same blocks' outputs through forward hooks.
An output that is also a graph output can keep a runtime from fusing across it, so the
errors here may differ slightly from the file's own; the end-to-end error (the `head`
row) is measured in the same run.

The error of a block is `verification.metrics.compare_outputs`' max_rel (max |a - b| / max
|reference|) over all samples. A block JUMPS when its error is at least `ratio` times the
error it was given (the previous block's), where the error it was given counts as at
least FLOOR_SHARE of the precision's end-to-end tolerance (`verification.metrics`): the
first block starts from exact input, and errors far below the budget say nothing. The
report names the first block that jumps, and the block with the largest growth.
"""

from __future__ import annotations

import contextlib
import copy
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from artifacts.errors import GlnetExportError, OptionError
from artifacts.onnx_blocks import block_order

from .metrics import compare_outputs, make_batches, tolerance_for

if TYPE_CHECKING:
    from glnet.model import GLNet
    from runtimes.base import Runner

Progress = Callable[[str], None]
JUMP_RATIO = 10.0
FLOOR_SHARE = 0.1  # errors below a tenth of the precision's end-to-end tolerance count as that tenth
DEBUG_PREFIX = "glnet_debug/"


class PrecisionDebugError(GlnetExportError):
    """An artifact the debugger cannot take apart (the message says why)."""


@dataclass
class DebugOptions:
    images: Sequence[Path] = ()  # image files; () = the sample photographs (random inputs without any)
    precision: str | None = None  # OpenVINO: the compute precision asked (bf16, fp32, fp16); None: the IR's own
    ratio: float = JUMP_RATIO
    device: str = "cpu"
    threads: int | None = None

    def validate(self) -> None:
        if not self.ratio > 1:
            raise OptionError(f"--ratio must be above 1, not {self.ratio}")


@dataclass
class BlockError:
    block: str  # checkpoint-layout name
    tensor: str  # the artifact's tensor holding the block's output
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    cosine: float
    growth: float  # max_rel / the error the block was given (see the module's docstring)
    jumps: bool


@dataclass
class PrecisionDebugReport:
    artifact: str
    runner: str  # what ran it: "onnxruntime (cpu, fp16)", "openvino (CPU, bf16)"
    precision: str  # the precision that ran (what the errors belong to)
    requested_precision: str | None
    input_shape: tuple[int, int, int, int]
    samples: int
    photos: int
    ratio: float
    floor: float  # the smallest input error a block is judged against
    blocks: list[BlockError]
    first_jump: str | None  # the first block whose error jumps, None when none does
    largest_growth: str | None
    rule: str
    stages: dict[str, float] = field(default_factory=dict)  # `stages.I` -> its output's (last block's) error
    kept_float: tuple[str, ...] = ()  # blocks the file keeps in float on purpose (its metadata)
    notes: list[str] = field(default_factory=list)


def stage_errors(blocks: Sequence[BlockError]) -> dict[str, float]:
    """Stage -> the error of its output (its last block), in order."""
    found: dict[str, float] = {}
    for b in blocks:
        if b.block.startswith("stages."):
            found[".".join(b.block.split(".")[:2])] = b.max_rel
    return found


@contextlib.contextmanager
def _onnx_runner(path: Path, options: DebugOptions) -> Iterator[tuple[Runner, dict[str, str], list[str]]]:
    """onnxruntime on a copy of `path` with every block's output (as float32) a graph output;
    fp16 as a GPU stores it (`verification.fp16_emulation`)."""
    import onnx
    from onnx import helper

    from artifacts.onnx_blocks import block_outputs
    from artifacts.onnx_file import read_onnx
    from runtimes.onnxruntime import OnnxRuntimeRunner

    from .fp16_emulation import NOTE, emulate_fp16, has_fp16

    proto = read_onnx(path)
    tensors = block_outputs(proto, path)
    notes = []
    if has_fp16(proto):
        emulate_fp16(proto)
        notes.append(NOTE)
    names = {}
    for i, (block, tensor) in enumerate(tensors.items()):
        names[block] = f"{DEBUG_PREFIX}{block}"
        proto.graph.node.append(helper.make_node("Cast", [tensor], [names[block]], name=f"glnet_debug_cast_{i}",
                                                 to=onnx.TensorProto.FLOAT))
        proto.graph.output.append(helper.make_tensor_value_info(names[block], onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory(prefix="glnet-debug-") as tmp:
        copy_path = Path(tmp) / path.name
        onnx.save_model(proto, str(copy_path))
        runner = OnnxRuntimeRunner(copy_path, device=options.device, threads=options.threads)
        try:
            yield runner, names, notes
        finally:
            runner.close()


@contextlib.contextmanager
def _openvino_runner(path: Path, options: DebugOptions) -> Iterator[tuple[Runner, dict[str, str], list[str]]]:
    """OpenVINO on a copy of the IR with every block's output added as a model output."""
    from artifacts.backends import import_openvino
    from artifacts.openvino_ir import read_ir_block_outputs
    from runtimes.openvino import OpenVinoRunner

    ov = import_openvino()
    model = ov.Core().read_model(str(path))
    recorded = read_ir_block_outputs(model)
    if not recorded:
        raise PrecisionDebugError(f"{path}: no block map in the IR (converted before glnet-export recorded one): "
                                  "convert it again from its ONNX file")
    ops = model.get_ordered_ops()
    by_tensor = {name: port for op in ops for port in op.outputs() for name in port.get_names()}
    by_node = {op.get_friendly_name(): op for op in ops}
    ports, names, notes = [], {}, []
    for block, (node, index, tensor) in recorded.items():
        port = by_tensor.get(tensor)
        if port is None and node in by_node and index < by_node[node].get_output_size():
            port = by_node[node].output(index)
        if port is None:
            notes.append(f"{block}: its output ({tensor}) is no longer in the IR; left out")
            continue
        ports.append(port)
        names[block] = port.get_any_name()
    model.add_outputs(ports)
    with tempfile.TemporaryDirectory(prefix="glnet-debug-") as tmp:
        copy_path = Path(tmp) / path.name
        ov.save_model(model, str(copy_path), compress_to_fp16=False)
        runner = OpenVinoRunner(copy_path, device=options.device, threads=options.threads,
                                precision=options.precision)
        try:
            asked = runner.requested_precision
            if asked is not None and asked.lower() in ("bf16", "fp16", "f16") and runner.float_precision == "fp32":
                notes.append(f"asked OpenVINO for {asked}, but {runner.device} ran the float layers in f32 (no "
                             f"{asked} support here): the errors below are f32's, not {asked}'s")
            yield runner, names, notes
        finally:
            runner.close()


def _inputs(runner: Runner, options: DebugOptions) -> tuple[list[np.ndarray], int, tuple[int, int, int, int]]:
    from artifacts.metadata import ArtifactMetadata
    from artifacts.photos import sample_photo_paths

    meta = runner.metadata or ArtifactMetadata(model="unknown", num_classes=0)
    photos = list(options.images) or sample_photo_paths()
    dims = runner.inputs[0].shape if runner.inputs else ()
    # All samples in one batch where the batch is dynamic; else batches of the fixed size.
    batch = dims[0] if dims and isinstance(dims[0], int) else max(len(photos), 2)
    h, w = meta.input_size
    shape = (batch, 3, h, w)
    batches, n_photos = make_batches(meta, shape, photos, random=0 if photos else 2)
    return batches, n_photos, shape


def torch_block_outputs(model: GLNet, blocks: Sequence[str], batch: np.ndarray,
                        threads: int | None = None) -> dict[str, np.ndarray]:
    """The outputs of the named modules of `model` (deploy form, fp32) for one batch."""
    import torch

    from runtimes.torch import inference

    found: dict[str, np.ndarray] = {}
    hooks = []
    for name in blocks:
        module = model.get_submodule(name)
        hooks.append(module.register_forward_hook(
            lambda _m, _i, out, name=name: found.__setitem__(name, out.detach().float().numpy().copy())))
    try:
        with inference(threads):
            model(torch.from_numpy(batch))
    finally:
        for hook in hooks:
            hook.remove()
    return found


def judge(errors: Sequence[tuple[str, str, tuple[int, ...], dict[str, float]]], floor: float,
          ratio: float) -> tuple[list[BlockError], str | None, str | None]:
    """The blocks' growth, whether each jumps, the first that does and the largest growth."""
    rows: list[BlockError] = []
    given = floor
    for block, tensor, shape, m in errors:
        error = m["max_rel"] if math.isfinite(m["max_rel"]) else math.inf
        if math.isinf(given):
            growth = 1.0  # already infinite before this block: nothing new here
        else:
            growth = error / max(given, floor)
        rows.append(BlockError(block, tensor, shape, m["max_abs"], error, m["cosine"], growth, growth >= ratio))
        given = error
    first = next((r.block for r in rows if r.jumps), None)
    largest = max(rows, key=lambda r: r.growth).block if rows else None
    return rows, first, largest


def check_artifact(artifact: str | Path, options: DebugOptions) -> Path:
    """Refuse, before any slow work, what the debugger cannot take: returns the path."""
    options.validate()
    path = Path(artifact)
    suffix = path.suffix.lower()
    if suffix == ".engine":
        raise PrecisionDebugError(f"{path}: a TensorRT engine cannot show its blocks here; debug the fp16/int8 ONNX "
                                  "it is built from (glnet-export tensorrt --onnx-only) in onnxruntime")
    if suffix not in (".onnx", ".xml"):
        raise PrecisionDebugError(f"{path}: not an ONNX file (.onnx) or an OpenVINO IR (.xml)")
    if not path.is_file():
        raise PrecisionDebugError(f"{path}: no such file")
    if suffix == ".onnx" and options.precision is not None:
        raise OptionError("--precision is for OpenVINO IRs: an ONNX file runs in the precision written into it")
    return path


def debug_precision(artifact: str | Path, reference: GLNet, options: DebugOptions | None = None,
                    progress: Progress | None = None) -> PrecisionDebugReport:
    """Run `artifact` (.onnx in onnxruntime, .xml in OpenVINO) and `reference` (PyTorch fp32) on the
    same inputs and compare every GLNet block's output; see the module's docstring."""
    options = options or DebugOptions()
    path = check_artifact(artifact, options)
    say = progress or (lambda _msg: None)
    opener = _onnx_runner if path.suffix.lower() == ".onnx" else _openvino_runner
    deploy = copy.deepcopy(reference).eval().to_deploy()
    say(f"loading {path} with every block's output exposed")
    with opener(path, options) as (runner, names, notes):
        blocks = sorted(names, key=block_order)
        missing = [b for b in blocks if b not in dict(deploy.named_modules())]
        if missing:
            raise PrecisionDebugError(f"{path}: blocks {', '.join(missing)} are not modules of the reference "
                                      f"{reference.cfg.name}: is it the model the file was exported from?")
        batches, n_photos, shape = _inputs(runner, options)
        say(f"running {len(batches)} batch(es) of {shape[0]} in {runner.name} and PyTorch")
        ours: dict[str, list[np.ndarray]] = {b: [] for b in blocks}
        for batch in batches:
            got = runner.infer_all(batch)
            for b in blocks:
                ours[b].append(np.asarray(got[names[b]], dtype=np.float32))
        precision = runner.precision
        requested = getattr(runner, "requested_precision", None)
        kept = runner.metadata.kept_float if runner.metadata else ()
        label = runner.name
    # PyTorch after the runner is closed: a back-end's idle threads keep spinning for a while
    # and would slow PyTorch's several-fold on a small machine.
    theirs = torch_block_outputs(deploy, blocks, np.concatenate(batches), options.threads)
    errors = []
    for b in blocks:
        a, r = np.concatenate(ours[b]), theirs[b]
        if a.shape != r.shape:
            notes.append(f"{b}: shape {a.shape} in the artifact, {r.shape} in PyTorch; left out")
            continue
        errors.append((b, names[b], tuple(r.shape[1:]), compare_outputs(r, a, topk=False)))
    floor = FLOOR_SHARE * tolerance_for(precision).max_rel
    rows, first, largest = judge(errors, floor, options.ratio)
    rule = (f"a block jumps when its max rel error is >= {options.ratio:g}x the error it was given (the previous "
            f"block's, counted as at least {floor:.2g}: {FLOOR_SHARE:g} of the {precision} tolerance)")
    return PrecisionDebugReport(
        artifact=str(path), runner=label, precision=precision, requested_precision=requested, input_shape=shape,
        samples=sum(len(b) for b in batches), photos=n_photos, ratio=options.ratio, floor=floor, blocks=rows,
        first_jump=first, largest_growth=largest, rule=rule, stages=stage_errors(rows), kept_float=tuple(kept),
        notes=notes,
    )
