"""Prove an artifact computes what PyTorch computes (or what another artifact computes).

The candidate runs in its own back-end (`runtimes.load`); the reference is either a
PyTorch GLNet (its reference form, never the deploy form being checked) or a second
artifact. Used after every export and by `glnet-export verify`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import runtimes
from artifacts.errors import GlnetExportError, OptionError
from artifacts.photos import sample_photo_paths
from glnet.model import GLNet
from runtimes.base import Runner
from runtimes.torch import TorchRunner
from verification.metrics import VerificationReport, shapes_to_verify, tolerance_for, verify, verify_outputs


class VerifyError(GlnetExportError):
    """The comparison cannot be set up (no metadata, incompatible artifacts)."""


@dataclass
class VerifyOptions:
    batch: int = 1
    max_rel: float | None = None  # None: the default of the precision that ran
    min_cosine: float | None = None
    min_top1: float | None = None
    threads: int | None = None
    precision: str | None = None  # asked of back-ends that choose their own (OpenVINO)
    device: str = "cpu"
    shapes: list[tuple[int, int, int, int]] | None = None  # None: chosen from the metadata
    max_photos: int | None = None  # None: every photograph available (10 with scikit-image + scikit-learn)
    photos: Sequence[Path] | None = None  # these images instead of the sample photographs

    def validate(self) -> None:
        """Refuse values that cannot work, before an export or a run rather than after it."""
        if self.batch < 1:
            raise OptionError(f"--batch must be >= 1, not {self.batch}")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"--threads must be >= 1, not {self.threads}")
        if self.max_rel is not None and not self.max_rel > 0:
            raise OptionError(f"--max-rel must be above 0, not {self.max_rel}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise OptionError(f"--min-cosine is a cosine, within -1..1, not {self.min_cosine}")
        if self.min_top1 is not None and not 0.0 <= self.min_top1 <= 1.0:
            raise OptionError(f"--min-top1 is a fraction, within 0..1, not {self.min_top1}")


def verify_artifact(
    path: str | Path,
    reference: GLNet | str | Path,
    options: VerifyOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> VerificationReport:
    """Compare the artifact at `path` with `reference` on photographs and random inputs.

    Shapes: the export shape, plus another batch size when the batch is dynamic, plus a
    larger and an odd resolution when height and width are dynamic. Tolerances are those
    of the precision that actually ran, unless overridden.
    """
    options = options or VerifyOptions()
    with runtimes.load(path, device=options.device, threads=options.threads,
                       precision=options.precision) as candidate:
        return verify_runner(candidate, reference, options, progress)


def verify_runner(
    candidate: Runner,
    reference: GLNet | str | Path,
    options: VerifyOptions,
    progress: Callable[[str], None] | None = None,
) -> VerificationReport:
    """`verify_artifact` on an open runner, for callers that want more of it afterwards
    (the OpenVINO check reports the precisions its runner found)."""
    options.validate()
    meta = candidate.metadata
    if meta is None:
        raise VerifyError(f"{candidate.name}: no glnet-export metadata, so its input size and preprocessing "
                          "are unknown")
    batch = options.batch
    fixed_batch = candidate.inputs[0].shape[0]
    if isinstance(fixed_batch, int):
        batch = fixed_batch
    shapes = options.shapes or shapes_to_verify(meta, batch)
    tolerance = tolerance_for(candidate.precision, max_rel=options.max_rel, min_cosine=options.min_cosine,
                              min_top1=options.min_top1)
    features = meta.task == "features"
    ref_runner: Runner
    if isinstance(reference, GLNet) and features:
        from glnet.features import slot_blocks_of
        from runtimes.torch import FeaturesTorchRunner

        ref_runner = FeaturesTorchRunner(reference, slot_blocks_of(meta.outputs), threads=options.threads)
    elif isinstance(reference, GLNet):
        ref_runner = TorchRunner(reference, threads=options.threads)
    else:
        ref_runner = runtimes.load(reference, threads=options.threads, precision="fp32")
    with ref_runner:
        check_compatible(ref_runner, candidate)

        def on_shape(shape: tuple[int, int, int, int]) -> None:
            if progress:
                progress(f"verifying {candidate.name} at {'x'.join(map(str, shape))}")

        photos = list(options.photos) if options.photos is not None else sample_photo_paths(options.max_photos)
        if features:  # several outputs, each compared; top-1 means nothing for feature maps
            report = verify_outputs(ref_runner.infer_all, candidate.infer_all, meta, shapes, tolerance, photos,
                                    names=(ref_runner.name, candidate.name), on_shape=on_shape)
        else:
            report = verify(ref_runner.infer, candidate.infer, meta, shapes, tolerance, photos,
                            names=(ref_runner.name, candidate.name), on_shape=on_shape)
    report.precision = candidate.precision
    return report


def check_compatible(reference: Runner, candidate: Runner) -> None:
    ref, cand = reference.metadata, candidate.metadata
    if ref is None or cand is None:
        return
    if ref.task != cand.task or ref.outputs != cand.outputs:
        raise VerifyError(f"cannot compare outputs {', '.join(cand.outputs)} with {', '.join(ref.outputs)}")
    if ref.model != cand.model or ref.num_classes != cand.num_classes:
        raise VerifyError(f"cannot compare {cand.model} ({cand.num_classes} classes) with "
                          f"{ref.model} ({ref.num_classes} classes)")
    if ref.checkpoint_sha256 and cand.checkpoint_sha256 and ref.checkpoint_sha256 != cand.checkpoint_sha256:
        raise VerifyError("the two artifacts were exported from different checkpoints "
                          f"({ref.checkpoint_sha256[:12]}... vs {cand.checkpoint_sha256[:12]}...)")


# The name used by the ONNX exporter's own check.
verify_onnx = verify_artifact
