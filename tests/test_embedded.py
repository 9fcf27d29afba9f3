"""The shipped embedded model: its files agree with their record, and it denoises held-out digits."""
from pathlib import Path

import pytest
import torch
import yaml

from ipsolve.config import CONFIGS
from ipsolve.models import load_model
from ipsolve.models.loading import EMBEDDED

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def model():
    return load_model("embedded")


@pytest.fixture(scope="module")
def record():
    return yaml.safe_load(EMBEDDED.with_suffix(".yml").read_text())


def test_weights_match_their_record(model, record):
    training_config = yaml.safe_load((CONFIGS / "models" / "embedded_mnist32.yml").read_text())
    assert record["model"] == training_config["model"] and record["diffusion"] == training_config["diffusion"]
    assert model.num_parameters == record["weights"]["num_parameters"]
    assert 1_000_000 <= model.num_parameters <= 3_000_000
    assert EMBEDDED.stat().st_size == record["weights"]["size_bytes"] <= 10 * 2**20
    assert model.image_shape == (1, 32, 32) and len(model.alphas_cumprod) == 1000


def test_denoises_held_out_digits(model):
    clean = torch.load(DATA / "mnist_heldout16.pt", weights_only=True)["images"].float() / 255 * 2 - 1
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(clean.shape, generator=generator)
    t = torch.full((len(clean),), 300)
    a = model.alphas_cumprod[300].float()
    x_t = a.sqrt() * clean + (1 - a).sqrt() * noise
    with torch.no_grad():
        x0_hat = (x_t - (1 - a).sqrt() * model(x_t, t)) / a.sqrt()
    model_error = (x0_hat - clean).square().mean()
    rescaled_error = (x_t / a.sqrt() - clean).square().mean()  # = (1 − ᾱ)/ᾱ · E[ε²]
    assert model_error < 0.25 * rescaled_error
