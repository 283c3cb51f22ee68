"""Verifying an OpenVINO IR: the generic check plus what OpenVINO decides on its own.

The CPU plugin picks its compute precision (bf16 where the CPU has it) unless asked; the
report says what was asked, what ran and what the IR stores, and the photographs' own
top-1 and cosine, since int8 calibrated on real images clips the random inputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from glnet.model import GLNet
from runtimes.openvino import OpenVinoRunner

from .artifact import VerifyOptions, verify_runner
from .metrics import VerificationReport

Progress = Callable[[str], None]


@dataclass
class OpenVinoVerification:
    report: VerificationReport
    device: str
    requested_precision: str | None  # what verification asked the device for (None: its default)
    precision: str  # what ran, judged with this precision's tolerance
    float_precision: str
    weights_precision: str
    int8_nodes: int
    photos: int
    photo_top1: float | None  # top-1 agreement with the reference on the photographs alone
    # The smallest cosine on the photographs alone: int8 calibrated on real images clips
    # the random-normal inputs that `verify` adds, so those alone can fail int8's cosine.
    photo_min_cosine: float | None

    @property
    def passed(self) -> bool:
        return self.report.passed


def verify_openvino(
    xml: str | Path,
    reference: GLNet | str | Path,
    options: VerifyOptions | None = None,
    photos: Sequence[Path] | None = None,
    progress: Progress | None = None,
) -> OpenVinoVerification:
    """Run the IR in OpenVINO and `reference` on the same inputs, at every shape it claims.

    `options.precision` is the compute precision asked of the device; the default options
    pin "fp32", so the check measures the conversion, while None lets the device choose
    (bf16 on CPUs that have it). The tolerance is the one of what actually ran. `photos`
    default to the sample photographs; their top-1 agreement is also reported alone.
    """
    options = options or VerifyOptions(precision="fp32")
    if photos is not None:
        options = dataclasses.replace(options, photos=list(photos))
    cand = OpenVinoRunner(xml, device=options.device, threads=options.threads, precision=options.precision)
    with cand:
        report = verify_runner(cand, reference, options, progress)
    first = report.results[0] if report.results else None
    photo_top1 = first.photo_top1 if first else None
    photo_cosine = first.photo_min_cosine if first else None
    if first is not None and photo_top1 is not None and photo_cosine is not None:
        report.notes.append(f"on the {first.photos} photographs alone: top-1 agreement {photo_top1:.1%}, "
                            f"smallest cosine {photo_cosine:.5f}")
    return OpenVinoVerification(
        report=report, device=cand.device, requested_precision=options.precision, precision=cand.precision,
        float_precision=cand.float_precision, weights_precision=cand.weights_precision,
        int8_nodes=cand.int8_nodes, photos=first.photos if first else 0, photo_top1=photo_top1,
        photo_min_cosine=photo_cosine,
    )
