"""`DiffusionModel`: an ε-network together with its noise schedule, the object every solver takes."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class DiffusionModel(nn.Module):
    """``model(x_t, t) → ε`` for an unconditional ε-network ``net(x, t)``.

    Inputs and outputs stay in the caller's dtype: the network runs in its own parameter dtype, or
    under autocast at ``precision`` "fp16" / "bf16" (GPU use), and ``channels_last`` memory format
    when asked (it helps convolutions on GPUs with tensor cores).
    """

    learned_sigma = False

    def __init__(self, net: nn.Module, alphas_cumprod: torch.Tensor, image_shape: tuple[int, int, int] | None,
                 precision: str = "fp32", channels_last: bool = False):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.net = net.eval().requires_grad_(False)
        self.alphas_cumprod = alphas_cumprod  # plain attribute: .to(dtype) must not round the schedule
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self.precision, self.channels_last = precision, channels_last
        if getattr(net, "out_channels", None) is not None and getattr(net, "in_channels", None) is not None:
            self.learned_sigma = net.out_channels == 2 * net.in_channels
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is not None:
            raise ValueError("this model is unconditional: call it without cond")
        net_dtype = next(self.net.parameters()).dtype
        x = x_t.to(net_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        autocast_dtype = PRECISIONS[self.precision]
        autocast = (torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            eps = self.net(x, t)
        return eps.to(x_t.dtype).contiguous()
