"""The DDPM UNet of Ho et al. as used by the DDRM / SDEdit checkpoints (CelebA-HQ 256, LSUN, …).

Module names follow the checkpoints' state-dict layout (``temb.dense``, ``down[i].block[j]``,
``mid.attn_1``, ``up[i].upsample`` …), so their files load with ``load_state_dict(strict=True)``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of timesteps ``t`` (B,) → (B, dim): [sin(t·ω_k), cos(t·ω_k)],
    ω_k = 10000^(−k/(dim/2 − 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1)))
    angles = t.float()[:, None] * freqs[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Two GroupNorm–swish–conv layers with the timestep embedding added in between; 1×1 shortcut
    when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, dropout: float):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)
        q, k, v = (layer(h).reshape(b, c, height * width).transpose(1, 2) for layer in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √c) v
        return x + self.proj_out(attended.transpose(1, 2).reshape(b, c, height, width))


class Downsample(nn.Module):
    """Halves the resolution: a stride-2 3×3 conv on the right/bottom zero-padded input, or 2×2 average."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Doubles the resolution: nearest neighbour, then an optional 3×3 conv."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if hasattr(self, "conv") else x


class DDPMUNet(nn.Module):
    """ε-prediction UNet: ``net(x, t) → ε`` for x (B, in_channels, H, W), t (B,) timesteps.

    ``attn_resolutions`` are feature-map sizes relative to ``image_size`` (the training resolution);
    inputs of other sizes divisible by 2^(levels−1) run with the same layers.
    """

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], image_size: int, in_channels: int = 3,
                 dropout: float = 0.0, resamp_with_conv: bool = True):
        super().__init__()
        self.ch, self.num_res_blocks = ch, num_res_blocks
        self.in_channels, self.out_channels, self.image_size = in_channels, out_ch, image_size
        levels = len(ch_mult)
        temb_ch = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        level_channels = [ch * m for m in ch_mult]
        skip_channels = [ch]  # channels of every feature map the down path hands to the up path
        resolution, block_in = image_size, ch
        self.down = nn.ModuleList()
        for level, block_out in enumerate(level_channels):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(block_in, block_out, temb_ch, dropout))
                block_in = block_out
                if resolution in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
                skip_channels.append(block_in)
            if level != levels - 1:
                stage.downsample = Downsample(block_in, resamp_with_conv)
                resolution //= 2
                skip_channels.append(block_in)
            self.down.append(stage)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, temb_ch, dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(block_in, block_in, temb_ch, dropout)

        up_stages = []
        for level in reversed(range(levels)):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            block_out = level_channels[level]
            for _ in range(num_res_blocks + 1):
                stage.block.append(ResnetBlock(block_in + skip_channels.pop(), block_out, temb_ch, dropout))
                block_in = block_out
                if resolution in attn_resolutions:
                    stage.attn.append(AttnBlock(block_in))
            if level != 0:
                stage.upsample = Upsample(block_in, resamp_with_conv)
                resolution *= 2
            up_stages.insert(0, stage)  # up[i] works at the resolution of down[i]
        self.up = nn.ModuleList(up_stages)

        self.norm_out = group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    @classmethod
    def from_config(cls, model: Mapping, image_size: int = 256) -> "DDPMUNet":
        """Build from the ``model:`` mapping of a DDRM/SDEdit YAML config (``data.image_size`` apart)."""
        if model.get("type", "simple") != "simple":
            raise ValueError(f"model type {model['type']!r} is not supported: only 'simple' (ε-prediction) is")
        return cls(ch=model["ch"], out_ch=model["out_ch"], ch_mult=list(model["ch_mult"]),
                   num_res_blocks=model["num_res_blocks"], attn_resolutions=list(model["attn_resolutions"]),
                   image_size=image_size, in_channels=model.get("in_channels", 3),
                   dropout=model.get("dropout", 0.0), resamp_with_conv=model.get("resamp_with_conv", True))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        temb = timestep_embedding(t, self.ch).to(x.dtype)
        temb = self.temb.dense[1](F.silu(self.temb.dense[0](temb)))

        skips = [self.conv_in(x)]
        for stage in self.down:
            for i, block in enumerate(stage.block):
                h = block(skips[-1], temb)
                if len(stage.attn):
                    h = stage.attn[i](h)
                skips.append(h)
            if hasattr(stage, "downsample"):
                skips.append(stage.downsample(skips[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(skips[-1], temb)), temb)

        for stage in reversed(self.up):
            for i, block in enumerate(stage.block):
                h = block(torch.cat([h, skips.pop()], dim=1), temb)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)

        return self.conv_out(F.silu(self.norm_out(h)))
