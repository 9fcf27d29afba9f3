"""load_model: DDRM-layout checkpoints, diffusers UNet2DModel folders, and one-line errors."""
import hashlib
from pathlib import Path

import pytest
import torch
import yaml

from ipsolve.models import load_model

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def reference():
    return torch.load(DATA / "ddpm_unet_small.pt", map_location="cpu", weights_only=True)


@pytest.fixture
def checkpoint(tmp_path, reference):
    """The reference state dict saved as DDRM does (a bare state dict), with its YAML config next to it."""
    path = tmp_path / "small.ckpt"
    torch.save(reference["state_dict"], path)
    path.with_suffix(".yml").write_text(yaml.safe_dump(reference["config"]))
    return path


def linear_alphas_cumprod(start=1e-4, end=0.02, steps=1000):
    betas = [start + (end - start) * i / (steps - 1) for i in range(steps)]
    out, product = [], 1.0
    for beta in betas:
        product *= 1 - beta
        out.append(product)
    return torch.tensor(out, dtype=torch.float64)


def test_checkpoint_path_gives_the_reference_eps_model(checkpoint, reference):
    model = load_model(checkpoint)
    eps = model(reference["x"], reference["t"])
    assert torch.linalg.norm(eps - reference["eps"]) <= 1e-5 * torch.linalg.norm(reference["eps"])
    torch.testing.assert_close(model.alphas_cumprod, linear_alphas_cumprod(), rtol=1e-12, atol=0)
    assert model.image_shape == (3, 32, 32) and model.learned_sigma is False


def test_inputs_keep_their_dtype(checkpoint, reference):
    x64 = reference["x"].double()
    eps64 = load_model(checkpoint)(x64, reference["t"])
    assert eps64.dtype == torch.float64
    eps_bf16 = load_model(checkpoint, precision="bf16")(reference["x"], reference["t"])
    assert eps_bf16.dtype == torch.float32
    assert torch.linalg.norm(eps_bf16 - reference["eps"]) <= 0.05 * torch.linalg.norm(reference["eps"])


def test_sha256_is_checked_when_given(checkpoint):
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert load_model(checkpoint, sha256=digest).image_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="SHA-256"):
        load_model(checkpoint, sha256="0" * 64)


def test_missing_named_checkpoint_says_where_and_what(tmp_path, monkeypatch):
    monkeypatch.setenv("IPSOLVE_WEIGHTS", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        load_model("celeba_hq")
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "celeba_hq.ckpt") in message and "455 MB" in message and "IPSOLVE_WEIGHTS" in message


def test_corrupt_checkpoint_is_a_one_line_value_error(checkpoint):
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError) as error:
        load_model(checkpoint)
    assert "is corrupt or not a checkpoint" in str(error.value) and "\n" not in str(error.value)


def test_checkpoint_not_matching_its_config(checkpoint, reference):
    config = dict(reference["config"], model=dict(reference["config"]["model"], ch_mult=[1, 2]))
    with pytest.raises(ValueError, match="does not match its config"):
        load_model(checkpoint, config=config)


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        load_model("nope")


def test_diffusers_unet_folder(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(32, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()
    unet.save_pretrained(tmp_path)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                        beta_start=1e-4, beta_end=0.02)
    scheduler.save_pretrained(tmp_path)

    model = load_model(tmp_path)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 800])
    with torch.no_grad():
        expected = unet(x, t).sample
    torch.testing.assert_close(model(x, t), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.alphas_cumprod, linear_alphas_cumprod(), rtol=1e-6, atol=0)
    assert model.image_shape == (3, 16, 16) and model.learned_sigma is False


def test_gaussian_prior_by_name():
    prior = load_model("gaussian:1x2x3")
    x = torch.randn(4, 1, 2, 3)
    t = torch.tensor([0, 10, 500, 999])
    a = prior.alphas_cumprod.to(x)[t].view(-1, 1, 1, 1)
    # N(0, 0.25 I): E[eps | x_t] = sqrt(1 - a) x_t / (0.25 a + 1 - a)
    torch.testing.assert_close(prior(x, t), (1 - a).sqrt() * x / (0.25 * a + 1 - a), rtol=1e-4, atol=1e-5)
    assert prior.image_shape == (1, 2, 3)
