"""Figures the tool draws (`bench --plot`, `debug-precision --plot`): one place for the
optional matplotlib import and for writing a PNG.

matplotlib is the `plot` extra, imported only when a figure is asked for, with the Agg
canvas: no display and no pyplot global state, so drawing from a server or a thread is safe.
The PNG goes through `atomic_outputs`, so a failed draw never leaves half a file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .atomic import atomic_outputs
from .backends import BackendUnavailableError


def new_figure(width: float, height: float, dpi: int = 120) -> Any:
    """A matplotlib Figure on an Agg canvas, or BackendUnavailableError naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise BackendUnavailableError("--plot needs matplotlib: pip install 'glnet-export[plot]'") from None
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | Path) -> Path:
    """Lay the figure out and write it as a PNG at `path`, atomically."""
    fig.tight_layout()
    path = Path(path)
    with atomic_outputs(path) as (temp,):
        fig.savefig(temp, format="png")
    return path
