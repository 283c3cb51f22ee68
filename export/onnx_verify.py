"""Prove an ONNX file computes what PyTorch computes: onnxruntime vs the reference form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import runtimes
from glnet.model import GLNet
from glnet_export.errors import ExportError
from glnet_export.photos import sample_photo_paths
from glnet_export.verification import VerificationReport, shapes_to_verify, tolerance_for, verify
from runtimes.torch import TorchRunner


@dataclass
class VerifyOptions:
    batch: int = 1
    max_rel: float | None = None  # None: the default of the precision
    min_cosine: float | None = None
    min_top1: float | None = None
    threads: int | None = None
    shapes: list[tuple[int, int, int, int]] | None = None  # None: chosen from the metadata


def verify_onnx(
    path: str | Path,
    reference: GLNet,
    options: VerifyOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> VerificationReport:
    """Run `path` in onnxruntime and `reference` (its reference form) on the same inputs.

    Shapes: the export shape, plus another batch size when the batch is dynamic, plus a
    larger and an odd resolution when height and width are dynamic.
    """
    options = options or VerifyOptions()
    with runtimes.load(path, threads=options.threads) as candidate:
        meta = candidate.metadata
        if meta is None:
            raise ExportError(f"{path}: no glnet-export metadata, cannot tell how to feed it")
        batch = options.batch
        fixed_batch = candidate.inputs[0].shape[0]
        if isinstance(fixed_batch, int):
            batch = fixed_batch
        shapes = options.shapes or shapes_to_verify(meta, batch)
        tolerance = tolerance_for(meta.precision, max_rel=options.max_rel, min_cosine=options.min_cosine,
                                  min_top1=options.min_top1)
        torch_runner = TorchRunner(reference, threads=options.threads)

        def on_shape(shape: tuple[int, int, int, int]) -> None:
            if progress:
                progress(f"verifying at {'x'.join(map(str, shape))}")

        return verify(torch_runner.infer, candidate.infer, meta, shapes, tolerance, sample_photo_paths(),
                      names=("pytorch", candidate.name), on_shape=on_shape)
