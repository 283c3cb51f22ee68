"""Small building blocks of GLNet, plus the export-friendly pieces of its deploy form.

Everything here is math on tensors: nothing knows about ONNX or runtimes. The deploy
helpers (`pool_8x8`, `attention`) are written so that a graph capture sees only
shape-generic operations: sizes are read from tensors, never baked in as Python ints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN_EPS = 1e-6
L2_EPS = 1e-12  # F.normalize's default
POOL_BINS = 8  # 8 x 8 = 64 semantic slots


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW map."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, eps=LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def in_place_layout(self, x: Tensor) -> Tensor:
        """The same normalisation spelled out over axis 1 of the NCHW map: no transposes.

        The deploy form uses it. OpenVINO keeps the whole GLMix block in its own blocked
        layout this way; the two transposes around a LayerNormalization node cost it about
        10% of glnet_4g's latency (README, Benchmarks). The other consumers fuse these nodes
        back into LayerNormalization (export.passes.layer_norm): the onnxruntime-targeted file,
        where the fused node is about 4% faster, and the precision ONNX for TensorRT, whose
        kernel accumulates in fp32 (the squared deviations of the residual stream can pass
        fp16's range).
        """
        mean = x.mean(dim=1, keepdim=True)
        dev = x - mean
        var = (dev * dev).mean(dim=1, keepdim=True)
        return dev / torch.sqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


class LayerScale(nn.Module):
    """Per-channel scale; `shape` is (1, C, 1, 1) for NCHW maps or (C,) for tokens."""

    def __init__(self, shape: tuple[int, ...], init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full(shape, float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def layer_scale(dim: int, init_value: float, nchw: bool) -> nn.Module:
    if init_value <= 0:
        return nn.Identity()
    return LayerScale((1, dim, 1, 1) if nchw else (dim,), init_value)


class ResidualDWConv(nn.Conv2d):
    """h + DW3x3(h): the optional depthwise conv inside the MLP (`mlp.1`)."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + super().forward(x)


def conv_mlp(dim: int, ratio: int, dwconv: bool) -> nn.Sequential:
    """MLP on NCHW maps: keys `mlp.0` (1x1), `mlp.1` (optional DW), `mlp.3` (1x1)."""
    hidden = dim * ratio
    return nn.Sequential(
        nn.Conv2d(dim, hidden, 1),
        ResidualDWConv(hidden) if dwconv else nn.Identity(),
        nn.GELU(),
        nn.Conv2d(hidden, dim, 1),
    )


def token_mlp(dim: int, ratio: int) -> nn.Sequential:
    """MLP on tokens: keys `mlp.0` and `mlp.2`."""
    return nn.Sequential(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


def depthwise(dim: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim)


# ---------------------------------------------------------------------------
# Deploy-form helpers
# ---------------------------------------------------------------------------


def pool_matrix(size: int, like: Tensor) -> Tensor:
    """The (8, size) averaging matrix of PyTorch's adaptive pooling along one axis.

    Bin k of n covers [floor(k n / 8), ceil((k + 1) n / 8)). Built from `size` with tensor
    arithmetic so that an exported graph computes it for whatever size arrives at run
    time (a traced adaptive pooling is baked to the example's size: FIELD_NOTES trap 3).
    """
    k = torch.arange(POOL_BINS, device=like.device)
    start = (k * size) // POOL_BINS
    end = ((k + 1) * size + POOL_BINS - 1) // POOL_BINS
    pos = torch.arange(size, device=like.device)
    inside = (pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])
    weights = inside.to(like.dtype)
    return weights / (end - start)[:, None].to(like.dtype)


def pool_8x8(x: Tensor) -> Tensor:
    """Exact 8 x 8 adaptive average pooling as P_h @ x @ P_w^T, any H x W.

    Under torch.export the sizes are symbolic ints, so the matrices become graph ops.
    """
    p_h = pool_matrix(x.shape[2], x)
    p_w = pool_matrix(x.shape[3], x)
    return torch.matmul(p_h, torch.matmul(x, p_w.transpose(0, 1)))


def to_tokens(x: Tensor) -> Tensor:
    """B x C x H x W -> B x HW x C, through NHWC order (the deploy form's token layout)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def from_tokens(t: Tensor, like: Tensor) -> Tensor:
    """B x HW x C -> B x C x H x W, with H and W read from `like` (the inverse of `to_tokens`)."""
    return t.reshape(like.shape[0], like.shape[2], like.shape[3], -1).permute(0, 3, 1, 2)


def l2_normalize(x: Tensor, dim: int) -> Tensor:
    """`F.normalize(x, dim=dim)` without its `expand_as`, which exports as an Expand node."""
    return x / torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min(L2_EPS)


def attention(x: Tensor, mha: nn.MultiheadAttention) -> Tensor:
    """Self-attention with the weights of `mha`, as plain matmul and softmax.

    `x` is B x N x C. The query is scaled before the first matmul, the shape TensorRT
    recognises for its fused attention kernels.
    """
    heads = mha.num_heads
    dim = x.shape[-1]
    head_dim = dim // heads
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    # B x N x 3C -> 3 x B x heads x N x head_dim; -1 keeps N symbolic in a graph capture.
    qkv = qkv.reshape(x.shape[0], -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (head_dim**-0.5)
    attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)), dim=-1)
    out = torch.matmul(attn, v).transpose(1, 2).reshape(x.shape[0], -1, dim)
    return F.linear(out, mha.out_proj.weight, mha.out_proj.bias)
