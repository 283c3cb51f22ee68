"""The GLNet network: down-sampling layers and stages, alternating, then a classifier."""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import GLMixBlock, GridMHSABlock, TokenMHSABlock
from .config import GLMIX, HYBRID, MHA_NCHW, MHA_TOKENS, GLNetConfig


def _downsample_layers(cfg: GLNetConfig) -> nn.ModuleList:
    d = cfg.dims
    if cfg.downsample == "A":
        # Swin-style patchify stem, then BatchNorm + 2x2 stride-2 conv between stages.
        layers = [nn.Sequential(nn.Conv2d(3, d[0], 4, stride=4), nn.BatchNorm2d(d[0]))]
        layers += [nn.Sequential(nn.BatchNorm2d(d[i - 1]), nn.Conv2d(d[i - 1], d[i], 2, stride=2)) for i in (1, 2, 3)]
    else:
        # Two 3x3 stride-2 convs. Index 0 is an identity placeholder so that the keys are
        # `.1 .2 .4 .5` as in the released checkpoints.
        layers = [
            nn.Sequential(
                nn.Identity(),
                nn.Conv2d(3, d[0] // 2, 3, stride=2, padding=1),
                nn.BatchNorm2d(d[0] // 2),
                nn.GELU(),
                nn.Conv2d(d[0] // 2, d[0], 3, stride=2, padding=1),
                nn.BatchNorm2d(d[0]),
            )
        ]
        layers += [
            nn.Sequential(nn.Conv2d(d[i - 1], d[i], 3, stride=2, padding=1), nn.BatchNorm2d(d[i])) for i in (1, 2, 3)
        ]
    return nn.ModuleList(layers)


class GLNetStage(nn.Module):
    """A stack of blocks at one resolution (keys `stages.i.blocks.j`)."""

    def __init__(self, cfg: GLNetConfig, index: int) -> None:
        super().__init__()
        dim, kind = cfg.dims[index], cfg.stage_kinds[index]
        heads = dim // cfg.head_dim
        self.tokens = kind == MHA_TOKENS
        blocks: list[nn.Module] = []
        for j in range(cfg.depths[index]):
            if kind == GLMIX or (kind == HYBRID and j % 2 == 0):
                blocks.append(
                    GLMixBlock(dim, heads, cfg.mlp_ratio, cfg.pos_conv, cfg.mlp_dwconv, cfg.layerscale, cfg.param_slots)
                )
            elif kind in (HYBRID, MHA_NCHW):
                blocks.append(GridMHSABlock(dim, heads, cfg.mlp_ratio, cfg.pos_conv, cfg.mlp_dwconv, cfg.layerscale))
            else:
                blocks.append(TokenMHSABlock(dim, heads, cfg.mlp_ratio))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        if not self.tokens:
            for block in self.blocks:
                x = block(x)
            return x
        # Token stage: NCHW -> B x HW x C once, back once at the end.
        t = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            t = block(t)
        return t.transpose(1, 2).reshape(x.shape[0], -1, x.shape[2], x.shape[3])


class GLNet(nn.Module):
    """GLNet classifier. `to_deploy()` switches every block to its export-friendly form."""

    def __init__(self, cfg: GLNetConfig, num_classes: int = 1000) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.downsample_layers = _downsample_layers(cfg)
        self.stages = nn.ModuleList(GLNetStage(cfg, i) for i in range(4))
        self.norm = nn.BatchNorm2d(cfg.dims[3])
        self.head = nn.Linear(cfg.dims[3], num_classes)

    @property
    def deploy(self) -> bool:
        return any(getattr(m, "deploy", False) for m in self.modules() if m is not self)

    def to_deploy(self, enabled: bool = True) -> GLNet:
        """Switch every block to the deploy form (or back); same parameters, same function."""
        for module in self.modules():
            if isinstance(module, (GLMixBlock, GridMHSABlock, TokenMHSABlock)):
                module.deploy = enabled
        return self

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The four stage outputs (strides 4, 8, 16, 32), for dense-task backbones."""
        outputs = []
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
            outputs.append(x)
        return outputs

    def forward_features(self, x: Tensor) -> Tensor:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(self.norm(x).mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))




