"""Helpers that make weights look trained, for tests and benchmarks of random models.

Freshly initialised weights hide bugs: BatchNorm is an identity, layer scales are 1e-4,
`slot_scale` sits at its initial value. `perturb_weights_` moves every one of them far
from its initial value, deterministically, so that equivalence checks mean something.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn

from .model import GLNet

M = TypeVar("M", bound=nn.Module)


@torch.no_grad()
def perturb_weights_(model: M, seed: int = 0) -> M:
    gen = torch.Generator().manual_seed(seed)

    def rand(shape: torch.Size, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * scale + offset

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.copy_(rand(module.running_mean.shape, 0.5))
            module.running_var.copy_(rand(module.running_var.shape, 0.3).abs() + 0.5)
            module.weight.copy_(rand(module.weight.shape, 0.2, 1.0))
            module.bias.copy_(rand(module.bias.shape, 0.2))
        elif isinstance(module, nn.LayerNorm):
            module.weight.copy_(rand(module.weight.shape, 0.2, 1.0))
            module.bias.copy_(rand(module.bias.shape, 0.2))
    for name, param in model.named_parameters():
        if name.endswith("slot_scale"):
            # Trained GLNets learn temperatures well above the C^-0.5 start.
            param.copy_(torch.rand((), generator=gen) * 8 + 2)
        elif name.endswith("gamma"):
            param.copy_(rand(param.shape, 0.1, 0.5))
        elif name.endswith("init_slots"):
            param.copy_(rand(param.shape))
    return model


def seeded_model(name: str, seed: int = 0, num_classes: int = 1000) -> GLNet:
    """Variant `name` in eval mode, every weight fixed by `seed`: its initialisation draws
    from a generator seeded here (torch's global one is left as it was), then
    `perturb_weights_`. The same seed gives the same model, whatever ran before."""
    from .factory import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(name, num_classes=num_classes)
    return perturb_weights_(model, seed=seed).eval()
