"""Rich renderings of typed results, shared by the commands."""

from __future__ import annotations

from rich.table import Table

from verification.metrics import VerificationReport


def _fmt(value: float, spec: str) -> str:
    return "-" if value != value or value in (float("inf"), float("-inf")) else format(value, spec)


def verification_table(report: VerificationReport) -> Table:
    table = Table(title=f"Verification: {report.candidate} vs {report.reference} "
                        f"({report.precision}; {report.tolerance.describe()})", title_justify="left")
    for name, justify in (("shape", "left"), ("samples (photos)", "right"), ("max abs", "right"), ("max rel", "right"),
                          ("cosine", "right"), ("top-1", "right"), ("top-5", "right"), ("result", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "result")  # type: ignore[arg-type]
    for r in report.results:
        result = "[green]pass[/]" if r.passed else f"[red]FAIL[/] {'; '.join(r.failures)}"
        table.add_row("x".join(map(str, r.shape)), f"{r.samples} ({r.photos})", _fmt(r.max_abs, ".2e"),
                      _fmt(r.max_rel, ".2e"), _fmt(r.cosine, ".6f"), _fmt(r.top1, ".0%"), _fmt(r.top5, ".0%"),
                      result)
    if report.notes:
        table.caption = "\n".join(report.notes)
    return table
