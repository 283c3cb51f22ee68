"""Variant configurations of GLNet (see docs: GLNET.md) and the registry of names.

A variant is pure data: the model code in `model.py` builds any of them from a
`GLNetConfig`, so adding a size means adding one entry here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Stage kinds, as named in the specification.
GLMIX = "glmix"  # every block is a GLMix block
HYBRID = "hybrid"  # even blocks GLMix, odd blocks grid MHSA
MHA_NCHW = "mha_nchw"  # grid MHSA blocks on the NCHW map
MHA_TOKENS = "mha"  # token MHSA blocks (the stage works on a token sequence)

STAGE_KINDS = (GLMIX, HYBRID, MHA_NCHW, MHA_TOKENS)


@dataclass(frozen=True)
class GLNetConfig:
    """Everything that decides the architecture of one GLNet variant."""

    name: str
    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratio: int
    stage_kinds: tuple[str, str, str, str]
    downsample: str  # "A" (patchify 4x4) or "B" (two 3x3 stride-2 convs)
    pos_conv: bool  # x = x + DW3x3(x) at the start of each block
    mlp_dwconv: bool  # residual DW3x3 inside the MLP (`mlp.1`)
    layerscale: float  # 0 disables layer scale
    param_slots: bool = False  # learned `init_slots` instead of pooled ones
    num_slots: int = 64
    head_dim: int = 32
    description: str = ""
    tiny: bool = False  # a small test variant, not a released architecture

    def __post_init__(self) -> None:
        if self.downsample not in ("A", "B"):
            raise ValueError(f"downsample must be 'A' or 'B', not {self.downsample!r}")
        for kind in self.stage_kinds:
            if kind not in STAGE_KINDS:
                raise ValueError(f"unknown stage kind {kind!r}")
        for dim in self.dims:
            if dim % self.head_dim:
                raise ValueError(f"dim {dim} is not a multiple of head_dim {self.head_dim}")
        if self.num_slots != 64:
            # The 8 x 8 pooling that makes the initial slots fixes 64 slots.
            raise ValueError("GLNet uses 64 semantic slots (an 8 x 8 pooling)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_VARIANTS: dict[str, GLNetConfig] = {}


def _stl_like(name: str, dims: tuple[int, int, int, int], depths: tuple[int, int, int, int],
              mlp_ratio: int, **extra: Any) -> GLNetConfig:
    return GLNetConfig(
        name=name, dims=dims, depths=depths, mlp_ratio=mlp_ratio,
        stage_kinds=(GLMIX, GLMIX, GLMIX, MHA_TOKENS), downsample="A",
        pos_conv=False, mlp_dwconv=False, layerscale=0.0, **extra,
    )


def _4g_like(name: str, dims: tuple[int, int, int, int], depths: tuple[int, int, int, int],
             mlp_ratio: int, layerscale: float, **extra: Any) -> GLNetConfig:
    return GLNetConfig(
        name=name, dims=dims, depths=depths, mlp_ratio=mlp_ratio,
        stage_kinds=(GLMIX, GLMIX, HYBRID, MHA_NCHW), downsample="B",
        pos_conv=True, mlp_dwconv=True, layerscale=layerscale, **extra,
    )


_TINY_DIMS = (32, 64, 64, 96)
_TINY_DEPTHS = (1, 1, 2, 1)

for _cfg in (
    _stl_like("glnet_stl", (96, 192, 384, 768), (2, 2, 6, 2), 4,
              description="Swin-Tiny layout"),
    _stl_like("glnet_stl_paramslot", (96, 192, 384, 768), (2, 2, 6, 2), 4, param_slots=True,
              description="glnet_stl with learned initial slots"),
    _4g_like("glnet_4g", (64, 128, 256, 512), (4, 4, 18, 4), 3, 0.0),
    _4g_like("glnet_9g", (96, 192, 384, 768), (4, 4, 18, 4), 3, 0.0),
    _4g_like("glnet_16g", (128, 256, 512, 1024), (4, 4, 18, 4), 3, 1e-4),
    # Tiny variants: the same structures at a fraction of the cost, for fast tests and
    # for trying the toolchain. They are not released architectures.
    _4g_like("glnet_tiny", _TINY_DIMS, _TINY_DEPTHS, 2, 0.0, tiny=True,
             description="glnet_4g structure, tiny (tests)"),
    _4g_like("glnet_tiny_ls", _TINY_DIMS, _TINY_DEPTHS, 2, 1e-4, tiny=True,
             description="glnet_16g structure (layer scale), tiny (tests)"),
    _stl_like("glnet_stl_tiny", _TINY_DIMS, _TINY_DEPTHS, 2, tiny=True,
              description="glnet_stl structure, tiny (tests)"),
):
    _VARIANTS[_cfg.name] = _cfg


class UnknownModelError(ValueError):
    """Raised for a variant name that is not registered."""


def list_models(include_tiny: bool = True) -> list[str]:
    """Names of the registered variants, released ones first."""
    names = [n for n, c in _VARIANTS.items() if not c.tiny]
    if include_tiny:
        names += [n for n, c in _VARIANTS.items() if c.tiny]
    return names


def get_config(name: str) -> GLNetConfig:
    try:
        return _VARIANTS[name]
    except KeyError:
        known = ", ".join(list_models())
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None
