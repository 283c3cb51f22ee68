"""GLNet as a dense-task backbone: the four stage outputs, optionally the slot maps.

`GLNetFeatures` wraps a GLNet (reference or deploy form) and returns the stage outputs
(strides 4, 8, 16, 32) named `stage1..stage4`, then, for each chosen GLMix block, its
pixel-to-slot assignment (B x 64 x H x W, summing to 1 over the 64 slots) named
`slots_<block>`, e.g. `slots_stages.2.blocks.0`. The maps are the dispatch softmax the
block computes anyway (`GLMixBlock.record_slots`), so they cost no extra arithmetic and
cannot drift from the block's math. `export.onnx` exports this module with `--features`;
`runtimes.torch.FeaturesTorchRunner` runs it as the reference for verification.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import Tensor, nn

from .blocks import GLMixBlock
from .model import GLNet

STAGE_OUTPUTS = ("stage1", "stage2", "stage3", "stage4")
STRIDES = (4, 8, 16, 32)
SLOTS_PREFIX = "slots_"
_SHORT = re.compile(r"^(\d+)\.(\d+)$")


class UnknownSlotBlockError(ValueError):
    """A slot-map block spec that names no GLMix block of the model."""


def glmix_blocks(model: GLNet) -> list[str]:
    """Module paths of every GLMix block (the only blocks that have slots), in network order."""
    return [name for name, m in model.named_modules() if isinstance(m, GLMixBlock)]


def resolve_slot_blocks(model: GLNet, specs: Sequence[str]) -> tuple[str, ...]:
    """Block specs -> module paths. A spec is `stages.S.blocks.B`, its short form `S.B`
    (indices as in the checkpoint keys, 0-based), `last` (the deepest GLMix block) or `all`.
    """
    known = glmix_blocks(model)
    chosen: list[str] = []
    for raw in specs:
        spec = raw.strip()
        if not spec:
            continue
        if spec == "all":
            names = known
        elif spec == "last":
            names = known[-1:]
        else:
            short = _SHORT.match(spec)
            name = f"stages.{short[1]}.blocks.{short[2]}" if short else spec
            if name not in known:
                raise UnknownSlotBlockError(f"{spec!r} is not a GLMix block of {model.cfg.name}; slots exist in "
                                  f"{_listing(known)} (short form S.B, or 'last' / 'all')")
            names = [name]
        chosen += [n for n in names if n not in chosen]
    return tuple(chosen)


def _listing(names: list[str]) -> str:
    short = [n.replace("stages.", "").replace(".blocks.", ".") for n in names]
    return ", ".join(short[:12]) + (f", ... ({len(short)} in all)" if len(short) > 12 else "")


def output_names(slot_blocks: Sequence[str] = ()) -> tuple[str, ...]:
    return STAGE_OUTPUTS + tuple(SLOTS_PREFIX + b for b in slot_blocks)


def slot_blocks_of(outputs: Sequence[str]) -> tuple[str, ...]:
    """The blocks whose slot maps an artifact with these output names carries."""
    return tuple(o[len(SLOTS_PREFIX):] for o in outputs if o.startswith(SLOTS_PREFIX))


class GLNetFeatures(nn.Module):
    """`forward(x)` -> (stage1, stage2, stage3, stage4, *slot maps of `slot_blocks`).

    Shares (does not copy) the wrapped model's modules; it switches `record_slots` on in
    the chosen blocks, so wrap a copy when the model is used elsewhere as well.
    """

    def __init__(self, model: GLNet, slot_blocks: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.slot_blocks = resolve_slot_blocks(model, slot_blocks)
        modules = dict(model.named_modules())
        self._recorders: list[GLMixBlock] = []
        for name in self.slot_blocks:
            block = modules[name]
            assert isinstance(block, GLMixBlock)
            block.record_slots = True
            self._recorders.append(block)

    @property
    def output_names(self) -> tuple[str, ...]:
        return output_names(self.slot_blocks)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        stages = self.model.forward_stages(x)
        maps = []
        for block in self._recorders:
            assert block.last_slots is not None
            maps.append(block.last_slots)
            # Do not keep the tensor: under torch.export a tensor left on a module after the
            # call counts as an attribute mutation, and in eager mode it would pin memory.
            block.last_slots = None
        return (*stages, *maps)
