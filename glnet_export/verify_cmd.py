"""`glnet-export verify A [B]`: compare an artifact with PyTorch or with another artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import checked_output, err, fail, handle_errors, out, write_json
from .render import verification_table


def parse_shapes(text: str | None) -> list[tuple[int, int, int, int]] | None:
    """'1x3x224x224,2x3x256x256' -> shapes."""
    from artifacts.errors import OptionError

    if not text:
        return None
    shapes = []
    for part in text.split(","):
        try:
            dims = tuple(int(d) for d in part.lower().split("x"))
        except ValueError:
            raise OptionError(f"shape {part!r} is not NxCxHxW (e.g. 1x3x224x224)") from None
        if len(dims) != 4 or dims[1] != 3 or min(dims) < 1:
            raise OptionError(f"shape {part!r} must be Nx3xHxW")
        if min(dims[2:]) < 32:
            raise OptionError(f"shape {part!r}: height and width must be at least 32 (GLNet down-samples 32x)")
        gib = dims[0] * 3 * dims[2] * dims[3] * 4 / 2**30
        if gib > 1:  # the activations are many times the input: this would end killed for memory
            raise OptionError(f"shape {part!r}: its input alone is {gib:.1f} GiB; verify with smaller batches")
        shapes.append((dims[0], dims[1], dims[2], dims[3]))
    return shapes


@handle_errors
def verify(
    artifact: Annotated[Path, typer.Argument(help="The artifact to check (.onnx, .xml, .engine).")],
    reference: Annotated[Path | None, typer.Argument(help="A second artifact to compare with.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Variant (default: from metadata).")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Weights for PyTorch.")] = None,
    use_ema: Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights.")] = False,
    precision: Annotated[str | None, typer.Option(help="OpenVINO: fp32|bf16|fp16|default.")] = None,
    device: Annotated[str, typer.Option(help="Device of the artifact's back-end.")] = "cpu",
    shapes: Annotated[str | None, typer.Option(help="Shapes to check, e.g. 1x3x224x224,2x3x256x256.")] = None,
    batch: Annotated[int, typer.Option(help="Batch of the first shape checked.")] = 1,
    max_rel: Annotated[float | None, typer.Option(help="Tolerance: max |a-b| / max |ref|.")] = None,
    min_cosine: Annotated[float | None, typer.Option(help="Tolerance: smallest cosine similarity.")] = None,
    min_top1: Annotated[float | None, typer.Option(help="Tolerance: top-1 agreement, 0..1.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the report as JSON ('-' for stdout).")] = None,
) -> None:
    """Compare ARTIFACT with PyTorch (--checkpoint) or with REFERENCE; exit 0 only if all shapes pass."""
    from verification.artifact import VerifyOptions, verify_artifact

    if precision in ("default", "auto"):
        precision = None  # the back-end's own choice (bf16 on CPUs that have it)
    options = VerifyOptions(batch=batch, max_rel=max_rel, min_cosine=min_cosine, min_top1=min_top1,
                            threads=threads, precision=precision, device=device, shapes=parse_shapes(shapes))
    options.validate()
    ref: object = reference
    if reference is None:
        from verification.reference import pytorch_reference

        ref = pytorch_reference(artifact, model, checkpoint, use_ema)
    elif model is not None or checkpoint is not None:
        raise fail("--model/--checkpoint rebuild a PyTorch reference; with a REFERENCE artifact, leave them out")
    with err.status("verifying") as status:
        report = verify_artifact(artifact, ref, options, progress=status.update)  # type: ignore[arg-type]
    write_json(report, json_path)
    if json_path is None or str(json_path) != "-":
        out.print(verification_table(report))
    if not report.passed:
        raise fail(f"verification FAILED: {artifact} does not match {report.reference}")
    if json_path is None or str(json_path) != "-":
        out.print(f"[bold green]PASSED[/] {artifact} ({report.candidate}) matches {report.reference} "
                  f"at {len(report.results)} shape(s)")

