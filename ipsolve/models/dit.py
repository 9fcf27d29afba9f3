"""DiT (class-conditional latent transformer, e.g. DiT-XL/2-256) + VAE as an ε-model over latents.

`model(z_t, t, cond) → ε` with `cond` a long tensor of class labels (batch 1 broadcasts); `cond=None`
is the null class (1000 for ImageNet DiT), the unconditional branch of classifier-free guidance. DiT
learns its variance: by default the adapter returns 2C channels (ε, then v ∈ [−1, 1]) with
`learned_sigma = True`, as the solvers' DDPM expects; `eps_only=True` returns the first C channels.
"""
from __future__ import annotations

import torch

from ipsolve.models.latent import (DIT_LAYOUT, VAECodec, alphas_cumprod_from_folder, batch_of, check_layout,
                                   import_optional, load_part)

# DiT (ADM) schedule: linear β from 1e-4 to 0.02 over 1000 steps.
DIT_SCHEDULE = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "num_train_timesteps": 1000}


class DiT(torch.nn.Module):
    """Class-conditional ε-model over latents; `image_shape` is the latent shape (4, 32, 32 for DiT-XL/2-256)."""

    def __init__(self, transformer, vae, alphas_cumprod, eps_only=False):
        super().__init__()
        self.transformer, self.vae = transformer, vae
        self.codec = VAECodec(vae)
        self.alphas_cumprod = alphas_cumprod
        config = transformer.config
        channels = config.in_channels
        self.image_shape = (channels, config.sample_size, config.sample_size)
        self.learned_sigma = (config.out_channels == 2 * channels) and not eps_only
        self.num_classes = config.num_embeds_ada_norm

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None, eps_only=False):
        """Load a local diffusers folder (transformer/ vae/, optional scheduler/)."""
        check_layout(path, DIT_LAYOUT, "DiT")
        diffusers = import_optional("diffusers")
        # Transformer2DModel maps DiT configs (norm_type ada_norm_zero) onto DiTTransformer2DModel.
        return cls(transformer=load_part(diffusers.Transformer2DModel, path, "transformer", device, dtype),
                   vae=load_part(diffusers.AutoencoderKL, path, "vae", device, dtype),
                   alphas_cumprod=alphas_cumprod_from_folder(path, DIT_SCHEDULE), eps_only=eps_only)

    @property
    def null_class(self):
        """The label of the unconditional branch (the last embedding row: 1000 for ImageNet)."""
        return self.num_classes

    def class_labels(self, labels):
        """Class indices (an int or a list) → long tensor (B,), each checked against the number of classes."""
        labels = torch.as_tensor([labels] if isinstance(labels, int) else list(labels), dtype=torch.long)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if len(bad):
            raise ValueError(f"class {int(bad[0])} is out of range: this DiT knows classes 0…{self.num_classes - 1}")
        return labels.to(self.transformer.device)

    def null_cond(self):
        """The null class as a (1,) label tensor."""
        return torch.tensor([self.null_class], device=self.transformer.device)

    def forward(self, x_t, t, cond=None):
        cond = self.null_cond() if cond is None else cond
        network_dtype = self.transformer.dtype
        out = self.transformer(x_t.to(network_dtype), timestep=t.to(x_t.device),
                               class_labels=batch_of(cond, x_t.shape[0]).to(x_t.device)).sample
        if not self.learned_sigma:
            out = out[:, : x_t.shape[1]]
        return out.to(x_t.dtype)

    def decode(self, latents):
        """Latents → images in [0, 1] (B, 3, 8h, 8w)."""
        return self.codec.decode(latents)

    def encode(self, images, generator=None):
        """Images in [0, 1] → scaled latents (the posterior mean, or a draw with `generator`)."""
        return self.codec.encode(images, generator=generator)
