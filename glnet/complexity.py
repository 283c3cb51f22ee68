"""Parameter and multiply-accumulate counts of a variant, without allocating its weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import get_config
from .model import GLNet


@dataclass(frozen=True)
class Complexity:
    name: str
    params: int
    macs: int  # multiply-accumulates for one image
    input_size: tuple[int, int]


def count_complexity(name: str, input_size: tuple[int, int] = (224, 224), num_classes: int = 1000) -> Complexity:
    """Counted with torch's FlopCounterMode on the meta device (no memory, no compute).

    On the meta device `nn.MultiheadAttention` runs its composite path, so its input and
    output projections are counted; on a CPU in eval mode its fused fast path is invisible
    to FlopCounterMode, which is why a count taken there (3.43 G for glnet_4g) misses about
    1.05 G MACs of attention.
    """
    with torch.device("meta"):
        model = GLNet(get_config(name), num_classes=num_classes).eval()
        x = torch.empty(1, 3, *input_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(name, params, counter.get_total_flops() // 2, input_size)
