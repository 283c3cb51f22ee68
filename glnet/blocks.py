"""GLNet's three kinds of block, each with a reference form and a deploy form.

The reference ("training") form is written the way the authors wrote GLNet:
`nn.MultiheadAttention` and `F.adaptive_avg_pool2d`, so training code and checkpoints
behave as they always did. Setting `block.deploy = True` (normally through
`GLNet.to_deploy()`) switches to a form that computes the same function with the same
parameters using only operations that export to ONNX with dynamic batch, height and
width: the 8 x 8 pooling as two averaging matrices built from the input's size, and
attention as matmul + softmax. The switch is a plain Python attribute checked once per
call; it never depends on tensor values or sizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    LN_EPS,
    POOL_BINS,
    LayerNorm2d,
    attention,
    conv_mlp,
    depthwise,
    from_tokens,
    l2_normalize,
    layer_scale,
    pool_8x8,
    to_tokens,
    token_mlp,
)


class GLMixBlock(nn.Module):
    """Convolutions on the pixel grid, attention on 64 soft-clustered semantic slots."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: int,
        pos_conv: bool,
        mlp_dwconv: bool,
        layerscale: float,
        param_slots: bool = False,
    ) -> None:
        super().__init__()
        self.deploy = False
        num_slots = POOL_BINS * POOL_BINS
        self.init_slots = nn.Parameter(torch.randn(1, num_slots, dim) * 0.02) if param_slots else None
        self.slot_scale = nn.Parameter(torch.tensor(dim**-0.5))
        self.pos_conv = depthwise(dim, 3) if pos_conv else None
        self.norm1 = LayerNorm2d(dim)
        self.relation_mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.feature_conv = nn.Sequential(nn.Conv2d(dim, dim, 1), depthwise(dim, 5), nn.Conv2d(dim, dim, 1))
        self.norm2 = LayerNorm2d(dim)
        self.mlp = conv_mlp(dim, mlp_ratio, mlp_dwconv)
        self.ls1 = layer_scale(dim, layerscale, nchw=True)
        self.ls2 = layer_scale(dim, layerscale, nchw=True)
        # Opt-in, for visualising the semantic slots (glnet.features): when True, each
        # call keeps the pixel-to-slot assignment (the dispatch softmax, B x 64 x H x W,
        # summing to 1 over the slots) on `last_slots`. It is a tensor already computed,
        # so the math and the default graph are unchanged.
        self.record_slots = False
        self.last_slots: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:
            x = self._glmix_deploy(x)
            return x + self.ls2(self.mlp(self.norm2.in_place_layout(x)))
        x = self._glmix_reference(x)
        return x + self.ls2(self.mlp(self.norm2(x)))

    def _glmix_reference(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if self.init_slots is not None:
            s0 = self.init_slots.expand(b, -1, -1)
        else:
            s0 = F.adaptive_avg_pool2d(x, POOL_BINS).flatten(2).transpose(1, 2)
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        y = self.norm1(x)
        yf = y.flatten(2).transpose(1, 2)  # B x HW x C
        logits = F.normalize(s0, dim=-1) @ (self.slot_scale * F.normalize(yf, dim=-1)).transpose(1, 2)
        slots = logits.softmax(dim=-1) @ yf  # clustering: B x 64 x C
        slots = self.relation_mha(slots, slots, slots, need_weights=False)[0]
        dispatch = logits.transpose(1, 2).softmax(dim=-1)  # B x HW x 64
        if self.record_slots:
            self.last_slots = dispatch.transpose(1, 2).reshape(b, -1, h, w)
        out = dispatch @ slots  # dispatching: B x HW x C
        out = out.transpose(1, 2).reshape(b, c, h, w) + self.feature_conv(y)
        return x + self.ls1(out)

    def _glmix_deploy(self, x: Tensor) -> Tensor:
        # Same math, arranged for ONNX runtimes. The channel LayerNorm is spelled out on
        # the NCHW map (no transposes around it). The slot matmuls take the normalised map
        # as B x HW x C tokens, permuted from NHWC order: that is the order OpenVINO keeps
        # convolution outputs in, so its CPU plugin needs no reorder between the matmuls
        # and the convolutions (3-6% faster than matmuls on B x C x HW; onnxruntime's
        # transpose optimizer runs both the same). tau is applied to the 64 slots rather
        # than the HW pixels: (a . tau b) = (tau a) . b. The two softmaxes stay Softmax
        # nodes: the fp16 and int8 converters find GLMix's sensitive ops by them.
        s0: Tensor
        if self.init_slots is not None:
            s0 = self.init_slots  # 1 x 64 x C, broadcast by matmul
        else:
            s0 = pool_8x8(x).flatten(2).transpose(1, 2)  # B x 64 x C
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        y = self.norm1.in_place_layout(x)  # B x C x H x W
        yt = to_tokens(y)  # B x HW x C
        query = l2_normalize(s0, dim=-1) * self.slot_scale
        logits = query @ l2_normalize(yt, dim=-1).transpose(1, 2)  # B x 64 x HW
        slots = logits.softmax(dim=-1) @ yt  # clustering: B x 64 x C
        slots = attention(slots, self.relation_mha)
        dispatch = logits.softmax(dim=1)  # B x 64 x HW
        if self.record_slots:
            self.last_slots = dispatch.reshape(x.shape[0], -1, x.shape[2], x.shape[3])
        out = from_tokens(dispatch.transpose(1, 2) @ slots, x)  # dispatching: B x C x H x W
        return x + self.ls1(out + self.feature_conv(y))


class GridMHSABlock(nn.Module):
    """Full self-attention over the pixels of an NCHW map (`mha_nchw`)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, pos_conv: bool, mlp_dwconv: bool,
                 layerscale: float) -> None:
        super().__init__()
        self.deploy = False
        self.pos_conv = depthwise(dim, 3) if pos_conv else None
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mha_op = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = LayerNorm2d(dim)
        self.mlp = conv_mlp(dim, mlp_ratio, mlp_dwconv)
        self.ls1 = layer_scale(dim, layerscale, nchw=False)
        self.ls2 = layer_scale(dim, layerscale, nchw=True)

    def forward(self, x: Tensor) -> Tensor:
        if self.pos_conv is not None:
            x = x + self.pos_conv(x)
        if self.deploy:
            # Tokens in NHWC order, as in GLMix's deploy form; norm2 on the tokens (the
            # same LayerNorm over C): one transpose fewer.
            t = to_tokens(x)
            t = t + self.ls1(attention(self.norm1(t), self.mha_op))
            x = from_tokens(t, x)
            n = F.layer_norm(t, self.norm2.normalized_shape, self.norm2.weight, self.norm2.bias, self.norm2.eps)
            return x + self.ls2(self.mlp(from_tokens(n, x)))
        t = x.flatten(2).transpose(1, 2)  # B x HW x C
        n = self.norm1(t)
        t = t + self.ls1(self.mha_op(n, n, n, need_weights=False)[0])
        x = t.transpose(1, 2).reshape(x.shape)
        return x + self.ls2(self.mlp(self.norm2(x)))


class TokenMHSABlock(nn.Module):
    """Pre-norm transformer block on a token sequence (`mha`, last stage of glnet_stl)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.deploy = False
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mha_op = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = token_mlp(dim, mlp_ratio)

    def forward(self, t: Tensor) -> Tensor:
        n = self.norm1(t)
        if self.deploy:
            t = t + attention(n, self.mha_op)
        else:
            t = t + self.mha_op(n, n, n, need_weights=False)[0]
        return t + self.mlp(self.norm2(t))
