"""Latency against input size as a PNG: where a user sees how cost grows with pixels.

GLMix's claim is that its cost grows about linearly with the pixel count (attention runs
on 64 slots, not on the pixels), where full attention grows quadratically. So the x axis
is the pixel count and the plot carries both reference curves, anchored at the smallest
measured size of the first series. matplotlib (the `plot` extra) comes through
`artifacts.figures`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from artifacts.errors import GlnetExportError
from artifacts.figures import new_figure, save_png

from .runner import ArtifactBench


class PlotError(GlnetExportError):
    """Nothing to plot: no measurement succeeded."""


def _series(artifacts: list[ArtifactBench]) -> dict[str, list[tuple[int, float, float, float, str]]]:
    """label -> [(pixels, p50, min, p90, "HxW")], sorted by pixels."""
    series: dict[str, list[tuple[int, float, float, float, str]]] = defaultdict(list)
    batches = {r.batch for a in artifacts for r in a.results}
    for art in artifacts:
        for r in art.results:
            if r.latency is None:
                continue
            label = f"{art.name} ({art.precision})" + (f", batch {r.batch}" if len(batches) > 1 else "")
            series[label].append((r.height * r.width, r.latency.p50, r.latency.min, r.latency.p90,
                                  f"{r.height}x{r.width}"))
    return {k: sorted(v) for k, v in series.items()}


def plot_latency(artifacts: list[ArtifactBench], path: str | Path, subtitle: str = "") -> Path:
    """Write p50 latency (bars: min to p90) against pixels for every artifact and batch."""
    series = _series(artifacts)
    if not series:
        raise PlotError("nothing to plot: no measurement succeeded")
    fig = new_figure(8, 5)
    ax = fig.add_subplot()
    for label, points in series.items():
        px = [p[0] / 1e6 for p in points]
        p50 = [p[1] for p in points]
        bars = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        ax.errorbar(px, p50, yerr=bars, marker="o", capsize=3, label=label)
    first = next(iter(series.values()))
    if len({p[0] for p in first}) > 1 or len(series) > 1:
        px0, ms0 = first[0][0], first[0][1]
        top = max(p[0] for points in series.values() for p in points)
        xs = [px0 + (top - px0) * i / 40 for i in range(41)]
        ax.plot([x / 1e6 for x in xs], [ms0 * x / px0 for x in xs], "--", color="0.45",
                label="linear in pixels (GLMix's claim)")
        ax.plot([x / 1e6 for x in xs], [ms0 * (x / px0) ** 2 for x in xs], ":", color="0.45",
                label="quadratic in pixels (full attention)")
        ax.set_ylim(0, max(p[3] for points in series.values() for p in points) * 1.3)
    sizes = sorted({(p[0], p[4]) for points in series.values() for p in points})
    ax.set_xticks([s[0] / 1e6 for s in sizes], [f"{s[1]}\n{s[0] / 1e6:.3g} MP" for s in sizes], fontsize=8)
    ax.set_xlabel("input size (pixels)")
    ax.set_ylabel("latency per batch, ms (p50; bars min to p90)")
    ax.set_title("Latency against input size" + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)
