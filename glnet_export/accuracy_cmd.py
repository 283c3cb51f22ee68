"""`glnet-export accuracy ARTIFACT... --data DIR`: top-1 / top-5 of each artifact on labelled
images, with 95% intervals, and the change from PyTorch on the same images (--checkpoint)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from .common import checked_output, err, fail, handle_errors, out, write_json

CSV_COLUMNS = ("format", "backend", "precision", "images", "top1", "top1_low", "top1_high", "top5", "top5_low",
               "top5_high", "change_from_pytorch", "change_low", "change_high", "top5_change_from_pytorch",
               "top5_change_low", "top5_change_high", "agreement_with_pytorch", "agreement_low", "agreement_high",
               "images_per_second", "unreadable")


LAYOUTS = {"synset-folders": "synset folders", "index-folders": "class-index folders",
           "name-folders": "class-name folders", "labels-file": "labels file",
           "ilsvrc-devkit": "ILSVRC2012 val, devkit ground truth", "ilsvrc-kaggle": "ILSVRC2012 val, Kaggle labels"}


def _pct(p: Any) -> str:
    """An accuracy in percent, with its interval."""
    if p is None or p.value != p.value:
        return "-"
    return f"{p.value * 100:.2f} [dim]({p.low * 100:.1f}-{p.high * 100:.1f})[/]"


def _pp(change: Any) -> str:
    """A change in percentage points, with its interval."""
    if change is None:
        return "-"
    return f"{change.change * 100:+.2f} [dim]({change.low * 100:+.2f}, {change.high * 100:+.2f})[/]"


def _ran_as(row: Any) -> str:
    """"openvino bf16": the runtime and the precision that ran (the device, where not the CPU)."""
    runtime, _, rest = row.backend.partition(" (")
    device = rest.split(",")[0].lower()
    return f"{runtime} {row.precision}" + (f" on {device}" if device and device != "cpu" else "")


def accuracy_table(result: Any) -> Table:
    table = Table(title=f"Accuracy on {result.images} images of {result.classes} classes "
                        f"({LAYOUTS.get(result.layout, result.layout)})", title_justify="left")
    paired = result.reference is not None
    names = ["format", "ran as", "top-1 %", "top-5 %"]
    names += ["top-1 change, pp", "agree %"] if paired else []
    for name in [*names, "img/s"]:
        table.add_column(name, justify="left" if name in ("format", "ran as") else "right",
                         no_wrap=name not in ("format", "ran as"), overflow="fold")  # a long file name whole
    for r in result.rows:
        cells = [escape(Path(r.name).name), escape(_ran_as(r)), _pct(r.top1), _pct(r.top5)]
        if paired:
            agreement = "-" if r.agreement_with_pytorch is None else f"{r.agreement_with_pytorch.value * 100:.2f}"
            cells += [_pp(r.change_from_pytorch), agreement]
        table.add_row(*cells, f"{r.images_per_second:.0f}")
    notes = [f"data: {result.source}",
             "in brackets: 95% intervals (Wilson score for top-1 and top-5; for the change from PyTorch, in "
             "percentage points, Newcombe's paired interval: the same images)" if paired else
             "in brackets: 95% Wilson score intervals; --checkpoint (and --model) adds PyTorch and the change from it"]
    if paired:
        notes.append("agree: the share of images whose top-1 class is PyTorch's")
    notes.append(f"img/s: inference only, decoding excluded, batch {result.batch}")
    if result.unreadable:
        shown = "; ".join(result.unreadable[:3]) + ("; ..." if len(result.unreadable) > 3 else "")
        notes.append(f"{len(result.unreadable)} unreadable image(s) skipped: {shown}")
    table.caption = escape("\n".join(notes))
    table.caption_justify = "left"
    return table


def write_accuracy_csv(result: Any, target: Path) -> None:
    """One row per format; fractions (0..1), not percentages."""
    from artifacts.atomic import atomic_outputs

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in result.rows:
        row: dict[str, Any] = {"format": r.name, "backend": r.backend, "precision": r.precision, "images": r.images,
                               "images_per_second": f"{r.images_per_second:.2f}", "unreadable": len(r.unreadable)}
        for key, value in (("top1", r.top1), ("top5", r.top5), ("agreement", r.agreement_with_pytorch)):
            if value is not None:
                row["agreement_with_pytorch" if key == "agreement" else key] = value.value
                row[f"{key}_low"], row[f"{key}_high"] = value.low, value.high
        for key, change in (("change", r.change_from_pytorch), ("top5_change", r.top5_change_from_pytorch)):
            if change is not None:
                row[f"{key}_from_pytorch"] = change.change
                row[f"{key}_low"], row[f"{key}_high"] = change.low, change.high
        writer.writerow(row)
    with atomic_outputs(target) as (temp,):
        temp.write_text(buffer.getvalue(), encoding="utf-8")


@handle_errors
def accuracy(
    artifacts: Annotated[list[Path], typer.Argument(help="Artifacts to score (.onnx, .xml, .engine).")],
    data: Annotated[Path, typer.Option("--data", help="Labelled images: class folders (synset, index or name), "
                                       "or the images a --labels file lists.")],
    labels: Annotated[Path | None, typer.Option("--labels", help="path,label CSV, the ILSVRC2012 devkit's ground "
                                                "truth (meta.mat beside it) or Kaggle's LOC_val_solution.csv.")]
    = None,
    limit: Annotated[int | None, typer.Option(help="Score a class-balanced sample of N images.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit sample.")] = 0,
    batch: Annotated[int, typer.Option(help="Images per inference call.")] = 32,
    model: Annotated[str | None, typer.Option("--model", "-m", help="PyTorch variant (default: from metadata).")]
    = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Weights the artifacts were "
                                                    "exported from: adds PyTorch and the change from it.")] = None,
    use_ema: Annotated[bool, typer.Option("--ema", help="Use the checkpoint's EMA weights.")] = False,
    device: Annotated[str, typer.Option(help="Device of the artifacts' back-end.")] = "cpu",
    precision: Annotated[str | None, typer.Option(help="Ask OpenVINO for fp32|bf16|fp16 (default: its own).")]
    = None,
    threads: Annotated[int | None, typer.Option(help="Runtime CPU threads (default: the runtime's).")] = None,
    decode_threads: Annotated[int | None, typer.Option("--decode-threads", help="Image decoding threads.")] = None,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the results as JSON ('-': stdout).")] = None,
    csv_path: Annotated[Path | None, typer.Option("--csv", callback=checked_output,
                                                  help="Write one CSV row per format.")] = None,
) -> None:
    """Top-1 / top-5 accuracy of each ARTIFACT on labelled images, and the change from PyTorch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from verification.accuracy import AccuracyOptions, evaluate_accuracy

    options = AccuracyOptions(batch=batch, limit=limit, seed=seed, device=device,
                              precision=None if precision in ("default", "auto") else precision, threads=threads,
                              decode_threads=decode_threads)
    options.validate()
    if model is not None and checkpoint is None:
        raise fail("--model needs --checkpoint: PyTorch with random weights is not the model the artifacts hold")
    reference = None
    if checkpoint is not None:
        from verification.reference import pytorch_reference

        reference = pytorch_reference(artifacts[0], model, checkpoint, use_ema)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # On a terminal only: in logs and pipes a progress bar is noise.
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("reading the images", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(task, description=escape(f"scoring {what}"), completed=done, total=total)

        result = evaluate_accuracy(artifacts, data, labels, reference=reference, checkpoint=checkpoint,
                                   options=options, progress=progress)
    write_json(result, json_path)
    if csv_path is not None:
        write_accuracy_csv(result, csv_path)
    if json_path is None or str(json_path) != "-":
        out.print(accuracy_table(result))
