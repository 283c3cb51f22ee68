"""`debug-precision --plot`: each block's error against PyTorch fp32 as a PNG, the jump marked.

matplotlib (the `plot` extra) comes through `artifacts.figures`, as for `bench.plot`.
"""

from __future__ import annotations

import math
from pathlib import Path

from artifacts.figures import new_figure, save_png

from .precision_debug import PrecisionDebugReport


def plot_block_errors(report: PrecisionDebugReport, path: str | Path) -> Path:
    """Max rel error per block (log scale), in network order; the first jump in red, an infinite
    error drawn at the top of the axis, the floor a block is judged against dashed."""
    rows = report.blocks
    finite = [r.max_rel for r in rows if math.isfinite(r.max_rel) and r.max_rel > 0]
    top = max(finite + [report.floor]) * 30
    bottom = min(finite + [report.floor]) / 3
    fig = new_figure(max(6.0, 0.32 * len(rows) + 2), 4.8)
    ax = fig.add_subplot()
    xs = list(range(len(rows)))
    ys = [r.max_rel if math.isfinite(r.max_rel) else top for r in rows]
    ys = [max(y, bottom) for y in ys]
    ax.plot(xs, ys, "-", color="0.6", zorder=1)
    colors = ["tab:red" if r.block == report.first_jump else "tab:blue" for r in rows]
    ax.scatter(xs, ys, c=colors, zorder=2)
    broken = next((x for x, r in zip(xs, rows, strict=True) if not math.isfinite(r.max_rel)), None)
    if broken is not None:
        ax.annotate("inf / NaN from here on", (broken, top), textcoords="offset points", xytext=(4, -12), fontsize=7)
    for x, (a, b) in enumerate(zip(rows, rows[1:], strict=False)):
        if a.block.split(".")[:2] != b.block.split(".")[:2] and b.block.startswith("downsample_layers"):
            ax.axvline(x + 0.5, color="0.85", lw=0.8)  # a new stage starts
    ax.axhline(report.floor, ls="--", color="0.5", lw=0.8, label=f"floor {report.floor:.2g}")
    ax.set_yscale("log")
    ax.set_ylim(bottom, top * 1.5)
    ax.set_xticks(xs, [r.block.replace("stages.", "s").replace(".blocks.", ".b").replace("downsample_layers.", "down")
                       for r in rows], rotation=70, fontsize=7)
    ax.set_ylabel("max |artifact - PyTorch| / max |PyTorch|")
    verdict = f"first jump: {report.first_jump}" if report.first_jump else "no block jumps"
    ax.set_title(f"{Path(report.artifact).name}: {report.runner} vs PyTorch fp32 per block\n{verdict} "
                 f"(>= {report.ratio:g}x its input's error)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return save_png(fig, path)
