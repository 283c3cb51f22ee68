"""OpenVINO int8 within an accuracy budget: NNCF's accuracy-controlled quantization.

`nncf.quantize_with_accuracy_control` quantizes as `export.openvino_int8.quantize_int8`
does (same model type, calibration images, ignored scope), scores the fp32 model and the
int8 model with our `validation_fn` (top-1 on the validation images, the labels from the
LabelledSet, with the compiled model NNCF hands it: NNCF compiles for f32 compute, so the
drop is int8's alone, not the bf16 a CPU would add by default), ranks its groups of
quantizers by how much each costs, and reverts the costliest to float one group at a
time until the drop (absolute, `DropType.ABSOLUTE`) is within `max_drop`. When it cannot
get there it returns its best try without saying so; we measure the result ourselves.

It runs on a copy of the model with a static input (batch 1, the export size): OpenVINO's
CPU plugin crashes running small int8 models with a dynamic input on AMX CPUs
(`runtimes.openvino` says more), and NNCF compiles the model as it gets it. A dynamic batch
is then given back by a reshape (NNCF folds no shape into a constant; the result is checked
at batch 2). Quantizing again with NNCF's reverted operations ignored is not the same: on
the digits model with miscalibrated ranges that gave a 3-point drop where NNCF's own result
gave none, because its bias correction and SmoothQuant then see another graph. Only an IR
with a dynamic height and width is quantized again that way (its ranges must be measured
at several sizes, and NNCF saw one); its drop is measured like any other, and refused if
over the budget. The operations NNCF reverted are read off its result: compute ops with
int8 operands in its unconstrained model and not in its result.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.backends import import_openvino
from artifacts.errors import ExportError, one_line
from artifacts.metadata import BudgetCheck
from artifacts.onnx_blocks import block_order

from .int8_budget import (
    AccuracyBudget,
    BudgetNotMetError,
    ValidationImages,
    budget_check,
    change_of,
    drop_words,
    interleaved_ratio,
    timing_words,
    top1,
    within,
)
from .openvino_int8 import SensitiveNodes, _is_int8_operand, _nncf, _quiet_nncf, ignored_scope, quantize_int8

Progress = Callable[[str], None]
CHOOSER = ("nncf.quantize_with_accuracy_control {version} (DropType.ABSOLUTE): quantizer groups ranked by their cost "
           "to top-1 on the validation images, reverted to float one group at a time until the drop is within the "
           "budget")
_COMPUTE = ("Convolution", "GroupConvolution", "MatMul")


def int8_ops(model: Any) -> set[str]:
    """Friendly names of the convolutions and MatMuls whose operands are both int8."""
    return {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in _COMPUTE
            and all(_is_int8_operand(op.input_value(i).get_node()) for i in range(2))}


def _static(model: Any, shape: Sequence[int]) -> Any:
    copy = model.clone()
    if copy.inputs[0].get_partial_shape().is_dynamic:
        copy.reshape(list(shape))
    return copy


def _compile(model: Any, shape: Sequence[int], hint: str | None) -> Any:
    ov = import_openvino()
    config = {"INFERENCE_PRECISION_HINT": hint} if hint else {}
    return ov.Core().compile_model(_static(model, shape), "CPU", config)


def _logits(compiled: Any, images: np.ndarray) -> np.ndarray:
    return np.concatenate([compiled(images[i:i + 1])[0] for i in range(len(images))]).astype(np.float32)


def top1_of(compiled: Any, items: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list[float]]:
    """NNCF's validation_fn: top-1 accuracy of `compiled` on (image, label) items, and each
    item's hit (NNCF ranks its quantizer groups on those)."""
    hits = [float(top1(compiled(image)[0])[0] == label) for image, label in items]
    return (float(np.mean(hits)) if hits else 0.0), hits


def quantize_int8_within_budget(model: Any, samples: list[np.ndarray], validation: ValidationImages,
                                budget: AccuracyBudget, *, glmix_float: bool = True, depthwise: bool = True,
                                keep_float: Sequence[str] = (), compute: str = "auto",
                                op_blocks: Mapping[str, str] | None = None,
                                progress: Progress | None = None) -> tuple[Any, SensitiveNodes, BudgetCheck]:
    """The int8 openvino.Model within `budget`, the GLMix nodes kept in float, and the record.

    `keep_float`: ops the user keeps in float (`--keep-float` blocks); `op_blocks`: op ->
    block, to name the blocks NNCF's reverted ops are in; `compute`: "f32" times both files
    in f32, "auto" in the device's own precision, as the IR will run. BudgetNotMetError when
    the measured drop is over the budget or nothing is left in int8."""
    nncf = _nncf()
    ov = import_openvino()
    say = progress or (lambda _msg: None)
    shape = (1, *validation.images.shape[1:])
    scope, sensitive = ignored_scope(model, glmix_float, depthwise, keep_float)
    at_size = [s for s in samples if tuple(s.shape[2:]) == tuple(shape[2:])]
    items = [(validation.images[i:i + 1], int(validation.labels[i])) for i in range(len(validation))]
    say(f"NNCF accuracy-controlled int8 on {len(at_size)} calibration and {len(items)} validation images")
    with tempfile.TemporaryDirectory(prefix="glnet-export-nncf-") as tmp:
        params = nncf.AdvancedAccuracyRestorerParameters(intermediate_model_dir=tmp)  # its unconstrained int8
        try:
            with _quiet_nncf():
                restored = nncf.quantize_with_accuracy_control(
                    _static(model, shape), nncf.Dataset(at_size), nncf.Dataset(items), top1_of,
                    max_drop=budget.max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(at_size),
                    model_type=nncf.ModelType.TRANSFORMER, ignored_scope=scope,
                    advanced_accuracy_restorer_parameters=params)
        except Exception as exc:
            raise ExportError(f"NNCF accuracy-controlled int8 failed: {one_line(exc)}") from exc
        unconstrained = ov.Core().read_model(str(Path(tmp) / "intermediate_model.xml"))
    _compress_weights(unconstrained)  # as NNCF stores them in the file it returns
    reverted = sorted(int8_ops(unconstrained) - int8_ops(restored))  # none: `restored` is `unconstrained`
    final = _as_source(restored, model)
    if final is None:  # height and width dynamic: NNCF saw one size; calibrate at all of them again
        say("quantizing the dynamic-resolution model" + (f", the {len(reverted)} operations NNCF reverted in float"
                                                         if reverted else ""))
        final, _ = quantize_int8(model, samples, glmix_float=glmix_float, depthwise=depthwise,
                                 keep_float=list(keep_float) + reverted)
    say(f"measuring the int8 file against fp32 on {len(items)} images")
    fp32 = _logits(_compile(model, shape, "f32"), validation.images)
    logits = _logits(_compile(final, shape, "f32"), validation.images)
    plain = _logits(_compile(unconstrained, shape, "f32"), validation.images) if reverted else logits
    _check_batch(final, shape, validation.images, logits)
    change = change_of(logits, fp32, validation.labels)
    if not int8_ops(final) or not within(change, budget.max_drop):
        what = "nothing is left in int8" if not int8_ops(final) else f"the best it found drops {drop_words(change)}"
        raise BudgetNotMetError(
            f"NNCF found no int8 setting within {budget.max_drop * 100:.2f} pp of top-1 on {len(items)} images of "
            f"{budget.data}: unconstrained int8 drops {drop_words(change_of(plain, fp32, validation.labels))}, "
            f"{what}; nothing was written")
    speed, timing = 1.0, "the unconstrained int8 file itself: NNCF reverted nothing"
    if reverted:
        say("timing it against the unconstrained int8 file")
        hint = "f32" if compute == "f32" else None
        image = validation.images[:1]
        base, candidate = _compile(unconstrained, shape, hint), _compile(final, shape, hint)
        speed = interleaved_ratio(lambda: base(image), lambda: candidate(image))
        floats = hint or "the device's default precision"
        timing = timing_words(f"OpenVINO {ov.__version__} CPU, float layers in {floats}")
    blocks = sorted({op_blocks[op] for op in reverted if op in op_blocks}, key=block_order) if op_blocks else []
    record = budget_check(budget, change, fp32, logits, plain, validation.labels,
                          CHOOSER.format(version=nncf.__version__), blocks, reverted, speed, timing)
    return final, sensitive, record


def _as_source(restored: Any, model: Any) -> Any:
    """NNCF's result with the source's input shape again, or None when only a new quantization
    gives it: a dynamic batch is a reshape (NNCF folds no shapes into constants; the batch is
    checked below), a dynamic height and width need ranges measured at several sizes."""
    shape = model.inputs[0].get_partial_shape()
    if not shape.is_dynamic:
        return restored
    if any(shape[i].is_dynamic for i in range(1, len(shape))):
        return None
    restored.reshape({restored.inputs[0]: shape})
    return restored


def _check_batch(model: Any, shape: Sequence[int], images: np.ndarray, expected: np.ndarray) -> None:
    """A dynamic-batch result must give at batch 2 what it gives image by image."""
    if not model.inputs[0].get_partial_shape()[0].is_dynamic or len(images) < 2:
        return
    pair = _compile(model, (2, *shape[1:]), "f32")(images[:2])[0]
    if not np.allclose(pair, expected[:2], rtol=1e-3, atol=1e-3):
        raise ExportError("the int8 IR with its dynamic batch restored computes something else at batch 2 than "
                          "image by image; nothing was written")


def _compress_weights(model: Any) -> None:
    """NNCF's own last step: FakeQuantize on constant weights -> int8 constants (the form its
    files store). Without it the unconstrained model would be timed with fp32 weights."""
    try:
        from openvino._offline_transformations import compress_quantize_weights_transformation
    except ImportError:  # a later OpenVINO may move it; the comparison then includes the weight form
        return
    compress_quantize_weights_transformation(model)
