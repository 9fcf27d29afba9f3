"""Latent-model adapters (Stable Diffusion, DiT) on tiny random-weight pipeline folders, and the
classifier-free guidance wrapper."""
import shutil

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

from ipsolve.guidance import ClassifierFreeGuidance, guided  # noqa: E402
from ipsolve.models import load_model  # noqa: E402
from ipsolve.models.dit import DiT  # noqa: E402
from ipsolve.models.latent import load_latent_model  # noqa: E402
from ipsolve.models.stable_diffusion import StableDiffusion  # noqa: E402

T = torch.tensor([999, 500, 20])


def latents(batch=3, seed=0):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def scaled_linear_alphas_cumprod():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


# --- Stable Diffusion ---------------------------------------------------------------------------

def test_sd_folder_loads_as_eps_model_over_4x8x8_latents(sd):
    assert isinstance(sd, StableDiffusion)
    assert sd.image_shape == (4, 8, 8) and sd.learned_sigma is False
    assert sd.alphas_cumprod.dtype == torch.float64 and len(sd.alphas_cumprod) == 1000


def test_sd_eps_is_the_unet_on_the_clip_embeddings_of_the_prompt(sd, sd_folder):
    unet = UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(sd_folder, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(sd_folder, subfolder="tokenizer")
    ids = tokenizer(["a red cat"], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        embeddings = text_encoder(ids).last_hidden_state
        expected = unet(latents(), T, encoder_hidden_states=embeddings.expand(3, -1, -1)).sample
        got = sd(latents(), T, sd.encode_prompt("a red cat"))
    torch.testing.assert_close(got, expected)
    assert got.abs().mean() > 0.01  # random weights, but not a degenerate zero network


def test_sd_without_cond_is_the_empty_prompt(sd):
    with torch.no_grad():
        torch.testing.assert_close(sd(latents(), T), sd(latents(), T, sd.encode_prompt("")))
        assert not torch.allclose(sd(latents(), T), sd(latents(), T, sd.encode_prompt("a dog")))


def test_sd_keeps_the_caller_dtype(sd):
    with torch.no_grad():
        eps64 = sd(latents().double(), T, sd.encode_prompt("a cat"))
        eps32 = sd(latents(), T, sd.encode_prompt("a cat"))
    assert eps64.dtype == torch.float64
    torch.testing.assert_close(eps64.float(), eps32)


def test_sd_schedule_comes_from_the_scheduler_config_or_defaults_to_scaled_linear(sd, sd_folder, tmp_path):
    torch.testing.assert_close(sd.alphas_cumprod, scaled_linear_alphas_cumprod(), rtol=1e-5, atol=1e-6)
    bare = tmp_path / "no_scheduler"
    shutil.copytree(sd_folder, bare, ignore=shutil.ignore_patterns("scheduler"))
    torch.testing.assert_close(load_latent_model(str(bare)).alphas_cumprod, scaled_linear_alphas_cumprod(),
                               rtol=1e-5, atol=1e-6)


def test_vae_decode_and_encode_follow_the_scaling_factor(sd, sd_folder):
    vae = AutoencoderKL.from_pretrained(sd_folder, subfolder="vae")
    z = latents(2)
    with torch.no_grad():
        images = sd.decode(z)
        expected_images = ((vae.decode(z / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        expected_latents = vae.encode(2 * images - 1).latent_dist.mean * vae.config.scaling_factor
        encoded = sd.encode(images)
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, expected_images)
    torch.testing.assert_close(encoded, expected_latents)


# --- DiT ----------------------------------------------------------------------------------------

def test_dit_returns_eps_and_learned_sigma_channels(dit, dit_folder):
    transformer = DiTTransformer2DModel.from_pretrained(dit_folder, subfolder="transformer")
    labels = torch.tensor([3, 3, 7])
    with torch.no_grad():
        expected = transformer(latents(), timestep=T, class_labels=labels).sample
        got = dit(latents(), T, labels)
    assert isinstance(dit, DiT) and dit.learned_sigma and dit.image_shape == (4, 8, 8)
    assert got.shape == (3, 8, 8, 8)
    torch.testing.assert_close(got, expected)


def test_dit_eps_only_returns_the_first_channels(dit, dit_folder):
    eps_only = load_latent_model(dit_folder, eps_only=True)
    with torch.no_grad():
        full, eps = dit(latents(), T, dit.class_labels(3)), eps_only(latents(), T, dit.class_labels(3))
    assert eps_only.learned_sigma is False
    torch.testing.assert_close(eps, full[:, :4])


def test_dit_null_class_is_the_last_label_and_the_default(dit):
    assert dit.null_class == 10
    with torch.no_grad():
        torch.testing.assert_close(dit(latents(), T), dit(latents(), T, torch.tensor([10])))


def test_dit_schedule_is_linear(dit):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(dit.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-5, atol=1e-6)


def test_dit_rejects_an_unknown_class(dit):
    with pytest.raises(ValueError, match="class 10 is out of range"):
        dit.class_labels([1, 10])


# --- loading errors -----------------------------------------------------------------------------

def test_named_model_without_weights_is_a_one_line_file_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("IPSOLVE_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="stable-diffusion-v1-5") as error:
        load_model("sd15")
    assert "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="DiT-XL-2-256"):
        load_model("dit")


def test_named_model_is_found_under_the_weights_folder(tmp_path, monkeypatch, sd_folder):
    shutil.copytree(sd_folder, tmp_path / "stable-diffusion-v1-5")
    monkeypatch.setenv("IPSOLVE_WEIGHTS", str(tmp_path))
    assert isinstance(load_model("sd15"), StableDiffusion)


def test_incomplete_folder_names_the_missing_parts(tmp_path, sd_folder):
    shutil.copytree(sd_folder, tmp_path / "sd", ignore=shutil.ignore_patterns("tokenizer"))
    with pytest.raises(FileNotFoundError, match="tokenizer/ missing"):
        StableDiffusion.from_pretrained(str(tmp_path / "sd"))


def test_unreadable_weights_are_a_one_line_value_error(tmp_path, sd_folder):
    shutil.copytree(sd_folder, tmp_path / "sd")
    for weights in (tmp_path / "sd" / "unet").glob("diffusion_pytorch_model.*"):
        weights.unlink()
    with pytest.raises(ValueError, match="unet could not be loaded") as error:
        load_latent_model(str(tmp_path / "sd"))
    assert "\n" not in str(error.value)


# --- classifier-free guidance -------------------------------------------------------------------

class ConditionalSpy:
    """ε = x·(1 + c) with a per-image scalar conditioning c, plus a learned-variance channel block
    equal to c; records the batch size of every call."""

    alphas_cumprod = torch.linspace(0.99, 0.01, 1000)
    learned_sigma = True

    def __init__(self):
        self.batches = []

    def __call__(self, x, t, cond):
        self.batches.append(x.shape[0])
        c = cond.reshape(-1, 1, 1, 1).to(x)
        return torch.cat([x * (1 + c), c.expand_as(x)], dim=1)


@pytest.mark.parametrize("scale", [0.0, 1.0, 1.5, 7.5])
def test_guidance_is_the_unconditional_plus_w_times_the_difference(scale):
    spy = ConditionalSpy()
    cfg = ClassifierFreeGuidance(spy, scale, null_cond=torch.tensor([0.0]))
    x, cond = latents(3), torch.tensor([0.5, -1.0, 2.0])
    out = cfg(x, T, cond)
    eps_c, eps_u = x * (1 + cond.reshape(-1, 1, 1, 1)), x
    torch.testing.assert_close(out[:, :4], eps_u + scale * (eps_c - eps_u))
    torch.testing.assert_close(out[:, 4:], cond.reshape(-1, 1, 1, 1).expand_as(x))  # conditional branch
    assert spy.batches == [6]  # one network call of 2B images per guided evaluation


def test_guidance_w1_equals_conditional_and_w0_unconditional_on_stable_diffusion(sd):
    cond, null = sd.encode_prompt("a cat"), sd.null_cond()
    with torch.no_grad():
        conditional, unconditional = sd(latents(), T, cond), sd(latents(), T, null)
        w1 = ClassifierFreeGuidance(sd, 1.0, null)(latents(), T, cond)
        w0 = ClassifierFreeGuidance(sd, 0.0, null)(latents(), T, cond)
    torch.testing.assert_close(w1, conditional, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(w0, unconditional, rtol=1e-4, atol=1e-5)


def test_guided_skips_the_wrapper_at_w1_and_forwards_the_model_attributes(sd):
    assert guided(sd, 1.0, sd.null_cond()) is sd
    wrapper = guided(sd, 7.5, sd.null_cond())
    assert wrapper.alphas_cumprod is sd.alphas_cumprod and wrapper.image_shape == (4, 8, 8)
    assert wrapper.learned_sigma is False


def test_guidance_needs_a_conditioning():
    with pytest.raises(ValueError, match="needs a conditioning"):
        ClassifierFreeGuidance(ConditionalSpy(), 2.0, torch.tensor([0.0]))(latents(), T)
