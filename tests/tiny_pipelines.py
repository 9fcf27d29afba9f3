"""Tiny random-weight Stable Diffusion and DiT pipeline folders, built offline in the diffusers layout
(save_pretrained), so tests go through the same loader as real weights. Latents are 4×8×8."""
import json
import os

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"
TEXT_LENGTH = 8


def write_tokenizer(folder):
    """A CLIP BPE tokenizer over single letters: vocab.json and merges.txt (no merges)."""
    os.makedirs(folder, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({letter: 2 + i for i, letter in enumerate(LETTERS)})
    vocab.update({letter + "</w>": 2 + len(LETTERS) + i for i, letter in enumerate(LETTERS)})
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as file:
        json.dump(vocab, file)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as file:
        file.write("#version: 0.2\n")
    from transformers import CLIPTokenizer
    tokenizer = CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"),
                              model_max_length=TEXT_LENGTH)
    tokenizer.save_pretrained(folder)
    return len(vocab)


def tiny_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=4, sample_size=16)


def write_scheduler(folder, **config):
    from diffusers import DDIMScheduler
    DDIMScheduler(**config).save_pretrained(folder)


def write_stable_diffusion(path, seed=0, scheduler=True):
    """unet/ text_encoder/ tokenizer/ vae/ (and scheduler/) with random weights drawn from `seed`."""
    if scheduler:
        write_scheduler(os.path.join(path, "scheduler"), beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear")
    with torch.random.fork_rng():  # diffusers and transformers initialise weights from the global RNG
        torch.manual_seed(seed)
        _write_stable_diffusion_parts(path)
    return path


def _write_stable_diffusion_parts(path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = write_tokenizer(os.path.join(path, "tokenizer"))
    text_config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=TEXT_LENGTH, projection_dim=16,
                                 bos_token_id=0, eos_token_id=1, pad_token_id=1)
    CLIPTextModel(text_config).save_pretrained(os.path.join(path, "text_encoder"))
    UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                         layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                         attention_head_dim=2, norm_num_groups=4).save_pretrained(os.path.join(path, "unet"))
    tiny_vae().save_pretrained(os.path.join(path, "vae"))


def write_dit(path, seed=0, learned_sigma=True):
    """transformer/ vae/ scheduler/ with random weights; 10 classes plus the null class 10."""
    from diffusers import DiTTransformer2DModel

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=4, in_channels=4,
                              out_channels=8 if learned_sigma else 4, num_layers=1, sample_size=8, patch_size=2,
                              num_embeds_ada_norm=10).save_pretrained(os.path.join(path, "transformer"))
        tiny_vae().save_pretrained(os.path.join(path, "vae"))
    write_scheduler(os.path.join(path, "scheduler"), beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    return path
