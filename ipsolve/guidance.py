"""Classifier-free guidance as an ε-model wrapper.

The guided noise is ε = ε_u + w (ε_c − ε_u), with ε_c the conditional and ε_u the unconditional
prediction, both from one batched network call of 2B images. A guided evaluation counts as ONE network
function evaluation (NFE), the convention of the Nested Diffusion paper: solvers count calls of the
wrapper, so `preview.nfe` is the number of guided evaluations. Learned-variance channels (DiT) are not
guided: they come from the conditional branch.

Wrap only the model that the inner sampler sees; Nested Diffusion's outer step calls no network.
"""
from __future__ import annotations

import torch

from ipsolve.models.latent import batch_of


class ClassifierFreeGuidance:
    """`model(x_t, t, cond)` with guidance scale `scale` (w) and the unconditional `null_cond`."""

    def __init__(self, model, scale, null_cond):
        self.model, self.scale, self.null_cond = model, float(scale), null_cond

    @property
    def alphas_cumprod(self):
        return self.model.alphas_cumprod

    @property
    def learned_sigma(self):
        return getattr(self.model, "learned_sigma", False)

    @property
    def image_shape(self):
        return getattr(self.model, "image_shape", None)

    def __call__(self, x_t, t, cond=None):
        if cond is None:
            raise ValueError("classifier-free guidance needs a conditioning (a prompt or a class)")
        batch, channels = x_t.shape[:2]
        both = torch.cat([batch_of(cond, batch), batch_of(self.null_cond, batch)])
        out = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), both)
        conditional, unconditional = out.chunk(2)
        eps_c, eps_u = conditional[:, :channels], unconditional[:, :channels]
        guided = eps_u + self.scale * (eps_c - eps_u)
        return torch.cat([guided, conditional[:, channels:]], dim=1)


def guided(model, scale, null_cond):
    """The model to hand to a sampler: `model` itself when w = 1 (plain conditional ε, B images per
    call), else the guidance wrapper."""
    if scale == 1:
        return model
    return ClassifierFreeGuidance(model, scale, null_cond)
