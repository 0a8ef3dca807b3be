"""The improved-DDPM UNet. Module names and their order are part of the checkpoint format:
the public `.pt` files load with strict=True only if this tree matches theirs key for key."""
from __future__ import annotations

import itertools
import math
from abc import abstractmethod
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .nn import (
    SiLU,
    avg_pool_nd,
    checkpoint,
    conv_nd,
    linear,
    normalization,
    timestep_embedding,
    zero_module,
)


class TimestepBlock(nn.Module):
    """A block whose forward pass also takes the timestep embedding."""

    @abstractmethod
    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        ...


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential that hands the embedding to the children that want it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling, optionally followed by a 3x3 convolution."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2):
        super().__init__()
        self.channels = channels
        self.use_conv = use_conv
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Upsample expected {self.channels} channels, got {x.shape[1]}")
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """2x downsampling by a strided convolution (use_conv) or average pooling."""

    def __init__(self, channels: int, use_conv: bool, dims: int = 2):
        super().__init__()
        self.channels = channels
        stride = 2 if dims != 3 else (1, 2, 2)
        if use_conv:
            self.op = conv_nd(dims, channels, channels, 3, stride=stride, padding=1)
        else:
            self.op = avg_pool_nd(dims, kernel_size=stride, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(f"Downsample expected {self.channels} channels, got {x.shape[1]}")
        return self.op(x)


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep, by addition or by scale-and-shift of the norm."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: Optional[int] = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        dims: int = 2,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_checkpoint = use_checkpoint
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels), SiLU(), conv_nd(dims, channels, self.out_channels, 3, padding=1)
        )
        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(SiLU(), linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            SiLU(),
            nn.Dropout(p=dropout),
            zero_module(conv_nd(dims, self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = conv_nd(dims, channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x, emb), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        cond = self.emb_layers(emb).type(h.dtype)
        cond = cond.reshape(*cond.shape, *([1] * (h.ndim - cond.ndim)))
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(cond, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in itertools.islice(self.out_layers, 1, None):  # no Sequential built per call
                h = layer(h)
        else:
            h = self.out_layers(h + cond)
        return self.skip_connection(x) + h


class QKVAttention(nn.Module):
    """Dot-product attention over a packed (batch*heads, 3*ch, length) tensor: q, k, v stacked per head."""

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        ch = qkv.shape[1] // 3
        q, k, v = torch.split(qkv, ch, dim=1)
        # Scaling q and k separately by ch^-1/4 keeps fp16 products in range.
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return torch.einsum("bts,bcs->bct", weight, v)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, added back to the input."""

    def __init__(self, channels: int, num_heads: int = 1, use_checkpoint: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.channels = channels
        self.num_heads = num_heads
        self.use_checkpoint = use_checkpoint
        self.norm = normalization(channels)
        self.qkv = conv_nd(1, channels, channels * 3, 1)
        self.attention = QKVAttention()
        self.proj_out = zero_module(conv_nd(1, channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(self._forward, (x,), self.parameters(), self.use_checkpoint)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        qkv = qkv.reshape(b * self.num_heads, -1, qkv.shape[2])
        h = self.attention(qkv).reshape(b, -1, qkv.shape[-1])
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


class UNetModel(nn.Module):
    """UNet with timestep conditioning, residual blocks and attention at chosen downsampling rates.

    `attention_resolutions` holds downsampling factors (1, 2, 4, …), not pixel sizes.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: Optional[int] = None,
        use_checkpoint: bool = False,
        num_heads: int = 1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = tuple(attention_resolutions)
        self.dropout = dropout
        self.channel_mult = tuple(channel_mult)
        self.conv_resample = conv_resample
        self.num_classes = num_classes
        self.use_checkpoint = use_checkpoint
        self.num_heads = num_heads
        self.num_heads_upsample = num_heads_upsample

        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(linear(model_channels, emb_dim), SiLU(), linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        def res_block(ch_in: int, ch_out: int) -> ResBlock:
            return ResBlock(
                ch_in, emb_dim, dropout, out_channels=ch_out, dims=dims,
                use_checkpoint=use_checkpoint, use_scale_shift_norm=use_scale_shift_norm,
            )

        def attention(ch: int, heads: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads=heads, use_checkpoint=use_checkpoint)

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))]
        )
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in self.attention_resolutions:
                    layers.append(attention(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch, conv_resample, dims=dims)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(res_block(ch, ch), attention(ch, num_heads), res_block(ch, ch))

        self.output_blocks = nn.ModuleList([])
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in self.attention_resolutions:
                    layers.append(attention(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, conv_resample, dims=dims))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), SiLU(), zero_module(conv_nd(dims, model_channels, out_channels, 3, padding=1))
        )
        self.dtype_inner = torch.float32

    def convert_to_fp16(self) -> None:
        """Run the torso in float16 (norms stay float32 inside GroupNorm32)."""
        from .fp16_util import convert_module_to_f16

        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            part.apply(convert_module_to_f16)
        self.dtype_inner = torch.float16

    def convert_to_fp32(self) -> None:
        from .fp16_util import convert_module_to_f32

        for part in (self.input_blocks, self.middle_block, self.output_blocks):
            part.apply(convert_module_to_f32)
        self.dtype_inner = torch.float32

    @property
    def inner_dtype(self) -> torch.dtype:
        return self.dtype_inner

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass class labels y exactly when the model is class-conditional")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        if self.num_classes is not None:
            if y.shape != (x.shape[0],):
                raise ValueError(f"labels y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
            emb = emb + self.label_emb(y)
        skips = []
        h = x.type(self.inner_dtype)
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))
