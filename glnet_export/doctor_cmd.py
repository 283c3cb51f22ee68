"""`glnet-export doctor`: what this machine lacks, one line per check with the command that fixes it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import checked_output, err, handle_errors, out, write_json

LABELS = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[bold red]FAIL[/]", "info": "[dim]info[/]"}


@handle_errors
def doctor(
    cpu_only: Annotated[bool, typer.Option("--cpu-only", help="Only the CPU back-ends are wanted: a missing "
                                           "TensorRT or GPU does not fail.")] = False,
    json_path: Annotated[Path | None, typer.Option("--json", callback=checked_output,
                                                   help="Write the checks as JSON ('-': stdout).")] = None,
) -> None:
    """Check TensorRT, CUDA, the Jetson's JetPack, power mode and clocks, memory and the CPU back-ends;
    exit 0 when nothing blocks, 1 otherwise."""
    from bench.doctor import DoctorEnv, run_doctor

    report = run_doctor(DoctorEnv(cpu_only=cpu_only))
    write_json({"ok": report.ok, "jetson": report.jetson, "checks": report.checks}, json_path)
    to_stdout = json_path is not None and str(json_path) == "-"
    if not to_stdout:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            fix = f"  [bold]->[/] {escape(c.fix)}" if c.fix and c.status != "ok" else ""
            out.print(f"{LABELS[c.status]} {c.name:<{width}}  {escape(c.found)}{fix}", soft_wrap=True)
    verdict = report.verdict()
    if report.blocking and not cpu_only and {c.name for c in report.blocking} <= {"tensorrt", "cuda"}:
        verdict += " (--cpu-only when the CPU back-ends are all you need)"
    (err if to_stdout else out).print(("[bold green]OK[/] " if report.ok else "[bold red]NOT READY[/] ")
                                      + escape(verdict), soft_wrap=True)
    if not report.ok:
        raise typer.Exit(1)
