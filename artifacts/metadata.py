"""What an exported artifact carries about itself, so a runtime needs no source code.

Written into ONNX `metadata_props` (one key per field) by the exporter and read back by
every runtime; OpenVINO IR carries the same fields in its `rt_info`. Strings are stored
as they are, everything else as JSON, so the values stay readable in tools like Netron.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import GlnetExportError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_LABELS = "imagenet-1k"  # the labels shipped in artifacts/data
MIN_SIDE = 32  # GLNet down-samples 32x: the smallest height and width any artifact takes
# A key that marks a file as ours; runtimes use it to tell a GLNet artifact apart.
MARKER_KEY = "glnet_export_version"


class MetadataError(GlnetExportError, ValueError):
    """The artifact's metadata is missing or unreadable."""


@dataclass(frozen=True)
class BudgetCheck:
    """How an int8 file was held to an accuracy budget (`--max-drop`), measured as it was written.

    The drop is fp32 top-1 minus int8 top-1 on the same `images` labelled validation images
    (fractions: 0.01 is one percentage point), with its paired 95% interval
    (`artifacts.scoring.paired_change`). It was measured on the images the float parts were
    chosen on, so it is the search's own figure: held-out images can differ by its interval.
    """

    max_drop: float  # the budget, absolute
    drop: float  # measured: fp32 top-1 - int8 top-1 (negative: int8 got more right)
    drop_low: float  # its 95% interval
    drop_high: float
    images: int  # validation images it was measured on (unreadable ones left out)
    fp32_top1: float
    int8_top1: float
    unconstrained_top1: float  # the int8 file the same converter writes without a budget
    chooser: str  # how the float parts were chosen, in words
    kept_float: tuple[str, ...] = ()  # blocks left in float to meet the budget (beyond the converter's own)
    float_ops: tuple[str, ...] = ()  # OpenVINO: the operations NNCF's accuracy control reverted to float
    speed_vs_unconstrained: float | None = None  # this file's time / the unconstrained int8 file's (indicative)
    timing: str = ""  # how that ratio was measured

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> BudgetCheck:
        lists = {k: tuple(v) for k, v in value.items() if isinstance(v, list)}  # JSON has no tuples
        return cls(**{**value, **lists})

    def describe(self) -> str:
        """One line: the measured drop against the budget, what stayed float, the speed cost."""
        kept = ", ".join(self.kept_float) if self.kept_float else "nothing more"
        if self.float_ops:
            kept += f" ({len(self.float_ops)} operations)"
        speed = (f"; {self.speed_vs_unconstrained:.2f}x the unconstrained int8 file's time (indicative)"
                 if self.speed_vs_unconstrained is not None else "")
        return (f"top-1 drop {self.drop * 100:+.2f} pp (95% CI {self.drop_low * 100:+.2f} to "
                f"{self.drop_high * 100:+.2f}) on {self.images} images, budget {self.max_drop * 100:.2f} pp "
                f"(fp32 {self.fp32_top1:.2%}, int8 {self.int8_top1:.2%}, unconstrained int8 "
                f"{self.unconstrained_top1:.2%}); kept in float for it: {kept}{speed}")


@dataclass(frozen=True)
class Quantization:
    """What an int8 file quantized and how, so an app (and `glnet-export bench`) can say it."""

    tool: str  # e.g. "onnxruntime.quantization.quantize_static 1.32.0", "nncf 3.4.0"
    scheme: str  # weights and activations: types, symmetry, granularity, calibration method
    quantized_ops: dict[str, int] = field(default_factory=dict)  # op type -> nodes that compute in int8
    kept_float: str = ""  # what stayed in float on purpose, in words
    calibration_images: int = 0
    budget: BudgetCheck | None = None  # with `--max-drop`: the accuracy budget and how it was met

    def ops_line(self) -> str:
        """"176 Conv, 94 MatMul": the int8 op counts, largest first."""
        return ", ".join(f"{count} {op}" for op, count in sorted(self.quantized_ops.items(), key=lambda kv: -kv[1]))

    def describe(self) -> str:
        return f"{self.ops_line() or 'nothing'} in int8 ({self.scheme}); float: {self.kept_float or 'nothing else'}"


@dataclass
class ArtifactMetadata:
    model: str
    num_classes: int
    config: dict[str, Any] = field(default_factory=dict)
    input_name: str = "input"
    output_name: str = "logits"
    input_layout: str = "NCHW"
    color_order: str = "RGB"
    input_size: tuple[int, int] = (224, 224)  # H, W the weights were trained at
    crop_pct: float = 0.875  # resize the shorter side to size / crop_pct, then centre-crop
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    labels: str = IMAGENET_LABELS  # "imagenet-1k", or "" when the classes are unnamed
    dynamic: str = "batch"  # none | batch | shape
    precision: str = "fp32"
    random_weights: bool = True
    checkpoint_sha256: str = ""
    opset: int = 0
    torch_version: str = ""
    onnx_version: str = ""
    glnet_export_version: str = ""
    # "classify": one output, the logits. "features": the four stage outputs stage1..stage4
    # (strides 4, 8, 16, 32), then any slot maps `slots_<block>` (glnet.features).
    task: str = "classify"
    outputs: tuple[str, ...] = ("logits",)
    # Which runtime the file was rewritten for (export.passes): "portable" runs anywhere;
    # "onnxruntime" uses contrib ops (`contrib_ops`) that only `requires` can run.
    target: str = "portable"
    requires: str = ""  # e.g. "onnxruntime>=1.20"; "" = any ONNX runtime
    contrib_ops: tuple[str, ...] = ()  # "com.microsoft.Attention", ...
    graph_passes: dict[str, int] = field(default_factory=dict)  # pass name -> sites rewritten
    # OpenVINO: the compute precision the IR was built for ("f32": residual fold applied,
    # ask the device for f32); "" = the device's own choice.
    compute_precision: str = ""
    quantization: Quantization | None = None  # int8 files only
    # Blocks (checkpoint-layout names, artifacts.onnx_blocks) left in float on purpose in a
    # reduced-precision file (`--keep-float`); () = none beyond the converter's own choice.
    kept_float: tuple[str, ...] = ()


    @property
    def runtime_only(self) -> str | None:
        """The one runtime this file runs on, or None for a portable file."""
        return None if self.target in ("", "portable") else self.target

    def to_props(self) -> dict[str, str]:
        props = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Quantization):
                value = dataclasses.asdict(value)
            props[f.name] = value if isinstance(value, str) else json.dumps(value)
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> ArtifactMetadata:
        if MARKER_KEY not in props or "model" not in props:
            raise MetadataError("the file carries no glnet-export metadata (was it exported by glnet-export?)")
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in props:
                continue
            raw = props[f.name]
            if f.type in ("str", str):
                kwargs[f.name] = raw
                continue
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise MetadataError(f"metadata field {f.name!r} is not valid JSON: {raw[:60]!r}") from exc
            if f.name == "quantization" and value is not None:
                try:
                    budget = value.get("budget")
                    value = Quantization(**{**value, "budget": BudgetCheck.from_dict(budget) if budget else None})
                except TypeError as exc:
                    raise MetadataError(f"metadata field 'quantization' is incomplete: {exc}") from exc
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise MetadataError(f"incomplete glnet-export metadata: {exc}") from exc
