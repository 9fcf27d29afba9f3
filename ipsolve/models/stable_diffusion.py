"""Stable Diffusion 1.x as an ε-model over VAE latents: UNet2DConditionModel + CLIP text encoder + VAE.

`model(z_t, t, cond) → ε` with `cond` the CLIP text embeddings of `encode_prompt` (batch 1 broadcasts);
`cond=None` is the empty prompt (the unconditional branch of classifier-free guidance).
"""
from __future__ import annotations

import torch

from ipsolve.models.latent import (SD_LAYOUT, VAECodec, alphas_cumprod_from_folder, batch_of, check_layout,
                                   import_optional, load_part)

# SD 1.x was trained on the scaled-linear schedule: √β linear from √0.00085 to √0.012 over 1000 steps.
SD_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
               "num_train_timesteps": 1000}


class StableDiffusion(torch.nn.Module):
    """ε-prediction latent model; `image_shape` is the latent shape (4, 64, 64 for SD 1.5)."""

    learned_sigma = False

    def __init__(self, unet, text_encoder, tokenizer, vae, alphas_cumprod):
        super().__init__()
        if unet.config.get("prediction_type", "epsilon") not in ("epsilon", None):
            raise ValueError("only ε-prediction Stable Diffusion UNets are supported (SD 1.x)")
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.tokenizer = tokenizer
        self.codec = VAECodec(vae)
        self.alphas_cumprod = alphas_cumprod
        size = unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.image_shape = (unet.config.in_channels, height, width)

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None):
        """Load a local diffusers folder (unet/ text_encoder/ tokenizer/ vae/, optional scheduler/)."""
        check_layout(path, SD_LAYOUT, "Stable Diffusion")
        diffusers, transformers = import_optional("diffusers"), import_optional("transformers")
        return cls(unet=load_part(diffusers.UNet2DConditionModel, path, "unet", device, dtype),
                   text_encoder=load_part(transformers.CLIPTextModel, path, "text_encoder", device, dtype),
                   tokenizer=load_part(transformers.CLIPTokenizer, path, "tokenizer", device, dtype),
                   vae=load_part(diffusers.AutoencoderKL, path, "vae", device, dtype),
                   alphas_cumprod=alphas_cumprod_from_folder(path, SD_SCHEDULE))

    @torch.no_grad()
    def encode_prompt(self, prompts):
        """Text (a string or a list of strings) → CLIP embeddings (B, L, D), padded to the tokenizer's length."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0]

    def null_cond(self):
        """The empty prompt's embeddings (1, L, D): the unconditional branch of guidance."""
        return self.encode_prompt("")

    def forward(self, x_t, t, cond=None):
        cond = self.null_cond() if cond is None else cond
        network_dtype = self.unet.dtype
        eps = self.unet(x_t.to(network_dtype), t.to(x_t.device),
                        encoder_hidden_states=batch_of(cond, x_t.shape[0]).to(network_dtype)).sample
        return eps.to(x_t.dtype)

    def decode(self, latents):
        """Latents → images in [0, 1] (B, 3, 8h, 8w)."""
        return self.codec.decode(latents)

    def encode(self, images, generator=None):
        """Images in [0, 1] → scaled latents (the posterior mean, or a draw with `generator`)."""
        return self.codec.encode(images, generator=generator)
