"""What every command shares: consoles, the error policy, option parsing, JSON output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from artifacts.errors import GlnetExportError, OptionError, one_line
from artifacts.jsonable import jsonable

# Results go to stdout (so `--json -` and pipes stay clean); progress and errors to stderr.
# Not on a terminal (CI logs, pipes) rich would wrap tables at 80 columns; 120 keeps rows whole.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)

F = TypeVar("F", bound=Callable[..., Any])

# OpenVINO compute precisions an option may name; "default" leaves the device its own (bf16 on CPUs that have it).
INFER_PRECISIONS = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "default": None}


def debug_enabled() -> bool:
    return os.environ.get("GLNET_EXPORT_DEBUG", "") not in ("", "0")


def fail(message: str, code: int = 1) -> typer.Exit:
    # Messages are plain text: "[tensorrt]" in an install hint must not vanish as markup.
    err.print(f"[bold red]Error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _known_errors() -> tuple[type[BaseException], ...]:
    # Errors of the libraries underneath that say something useful on one line.
    from glnet.checkpoint import CheckpointError
    from glnet.config import UnknownModelError
    from glnet.features import UnknownSlotBlockError

    return (GlnetExportError, UnknownModelError, CheckpointError, UnknownSlotBlockError, FileNotFoundError,
            PermissionError, IsADirectoryError)


def handle_errors(fn: F) -> F:
    """One line on stderr and exit code 1 for known errors; 130 for Ctrl-C.

    Unexpected errors also get one line, pointing at GLNET_EXPORT_DEBUG=1 for the
    traceback, so that a user never has to read a stack dump to learn what went wrong.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            raise fail("interrupted; no half-written file was left behind", 130) from None
        except Exception as exc:
            if debug_enabled():
                raise
            if isinstance(exc, _known_errors()):
                raise fail(one_line(exc)) from None
            raise fail(f"unexpected {exc.__class__.__name__}: {one_line(exc)} "
                       "(set GLNET_EXPORT_DEBUG=1 for the traceback)") from None

    return wrapper  # type: ignore[return-value]


def checked_output(target: Path | None) -> Path | None:
    """Option callback for report files (--json; bench's --csv and --plot): refuse an
    unwritable path while parsing the options, before minutes of exporting or timing,
    rather than at the end of the work."""
    if target is not None and str(target) != "-":
        from artifacts.atomic import OutputPathError, check_writable

        try:
            check_writable(target)
        except OutputPathError as exc:
            raise fail(one_line(exc)) from None
    return target


def write_json(data: Any, target: Path | None) -> None:
    """Write `data` as JSON to a file, or to stdout when the target is '-'."""
    if target is None:
        return
    text = json.dumps(jsonable(data), indent=2) + "\n"
    if str(target) == "-":
        sys.stdout.write(text)
        return
    from artifacts.atomic import atomic_outputs

    with atomic_outputs(target) as (temp,):
        temp.write_text(text, encoding="utf-8")


def openvino_precision(value: str, option: str) -> str | None:
    """The OpenVINO compute precision `value` of `option` names (None: the device's own)."""
    if value not in INFER_PRECISIONS:
        raise OptionError(f"{option} must be one of {', '.join(INFER_PRECISIONS)}, not {value!r}")
    return INFER_PRECISIONS[value]


def mib(value: float | None) -> str:
    """A size given in MiB (the bench figures), readably; "-" when not measured."""
    return "-" if value is None else human_bytes(int(value * 2**20))


def warn_about_the_machine(device: Any, busy_consequence: str = "") -> None:
    """One warning line each for what makes timings on this machine unsteady: other processes
    busy on the CPUs, a Jetson whose clocks are not locked (`bench.sysinfo.DeviceInfo`)."""
    if device.busy_cpus and device.busy_cpus > 0.25:
        err.print(f"[yellow]WARNING:[/] other processes keep {device.busy_cpus:.1f} CPUs busy: timings will be "
                  f"noisy{busy_consequence}")
    if device.clock_warning():
        err.print(f"[yellow]WARNING:[/] {escape(device.clock_warning())}", soft_wrap=True)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"


def reference_for(source: Path, meta: Any, checkpoint: Path | None, use_ema: bool) -> Any:
    """PyTorch rebuilt from the metadata and --checkpoint; else the source file (said on stderr)."""
    from verification.reference import conversion_reference

    chosen = conversion_reference(source, meta, checkpoint, use_ema)
    if chosen.note:
        err.print(f"[yellow]note:[/] {chosen.note}")
    return chosen.reference


def model_from_options(name: str, checkpoint: Path | None, num_classes: int = 1000,
                       use_ema: bool = False) -> tuple[Any, str | None]:
    """The PyTorch model of --model/--checkpoint and the checkpoint's SHA-256; random weights
    (sha None) are announced on stderr, once, in the same words by every command."""
    import glnet

    glnet.get_config(name)  # an unknown name fails here, before the slow work
    loaded = glnet.load_model(name, checkpoint, num_classes=num_classes, use_ema=use_ema)
    if loaded.checkpoint_sha256 is None:
        err.print(f"[bold yellow]WARNING:[/] no --checkpoint given: RANDOM weights of {name} "
                  "(fine for latency work; its predictions mean nothing)")
    return loaded.model, loaded.checkpoint_sha256


def finish_export(result: Any, report: Any, summary: Any, json_path: Path | None, reference: str,
                  verification: Any = None) -> None:
    """How every converting command ends: the JSON (`--json -`: stdout, the verdict on
    stderr), or the summary table, the converter's notes and the verification table; then
    the verdict, a non-zero exit when the written file does not match `reference`.
    `report` is the VerificationReport (None: --no-verify); `verification` what goes into
    the JSON when it says more than the report (OpenVINO's precision record)."""
    from .render import verification_table

    write_json({"export": result, "verification": verification or report}, json_path)
    failed = f"verification FAILED: {result.path} was written but does not match {reference}"
    if json_path is not None and str(json_path) == "-":  # stdout holds the JSON; the verdict goes to stderr
        if report is not None and not report.passed:
            raise fail(failed)
        raise typer.Exit(0)
    out.print(summary)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    if report is None:
        out.print("[yellow]not verified[/] (--no-verify)")
        return
    out.print(verification_table(report))
    if not report.passed:
        raise fail(f"{failed} (see the table above)")
    out.print(f"[bold green]PASSED[/] {escape(str(result.path))} ({report.candidate}) matches "
              f"{escape(str(reference))} at {len(report.results)} shape(s)")
