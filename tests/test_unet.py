"""DDPMUNet against the reference DDPM/DDRM network: outputs on a small checkpoint, the CelebA-HQ layout."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from ipsolve.config import CONFIGS
from ipsolve.models import DDPMUNet
from ipsolve.models.unet import AttnBlock, timestep_embedding

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def reference():
    return torch.load(DATA / "ddpm_unet_small.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def small_net(reference):
    net = DDPMUNet.from_config(reference["config"]["model"], image_size=reference["config"]["data"]["image_size"])
    net.load_state_dict(reference["state_dict"], strict=True)
    return net.eval()


def test_reproduces_reference_outputs(reference, small_net):
    with torch.no_grad():
        eps = small_net(reference["x"], reference["t"])
    assert torch.linalg.norm(eps - reference["eps"]) <= 1e-5 * torch.linalg.norm(reference["eps"])


def test_celeba_hq_config_builds_the_checkpoint_layout():
    expected = json.loads((DATA / "celeba_hq_ckpt_keys.json").read_text())
    config = yaml.safe_load((CONFIGS / "models" / "celeba_hq.yml").read_text())
    with torch.device("meta"):
        net = DDPMUNet.from_config(config["model"], image_size=config["data"]["image_size"])
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == expected["keys"]
    assert sum(p.numel() for p in net.parameters()) == expected["num_parameters"] == 113_673_219


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 7, 999])
    embedding = timestep_embedding(t, 6)
    freqs = [10000 ** (-k / 2) for k in range(3)]
    expected = [[math.sin(s * f) for f in freqs] + [math.cos(s * f) for f in freqs] for s in (0, 7, 999)]
    torch.testing.assert_close(embedding, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_attention_is_softmax_over_pixels():
    torch.manual_seed(0)
    block = AttnBlock(32).eval()
    x = torch.randn(2, 32, 4, 5)
    h = block.norm(x)
    q, k, v = (layer(h).flatten(2) for layer in (block.q, block.k, block.v))  # (B, C, N)
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(32), dim=-1)   # (B, N, N)
    expected = x + block.proj_out((v @ weights.transpose(1, 2)).reshape(x.shape))
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_follows_input_dtype_and_other_sizes(reference, small_net):
    net64 = DDPMUNet.from_config(reference["config"]["model"], image_size=32).double()
    net64.load_state_dict(small_net.state_dict())
    x = reference["x"].double()
    with torch.no_grad():
        eps = net64(x, reference["t"])
        wide = small_net(torch.randn(1, 3, 16, 24), torch.tensor([10]))
    assert eps.dtype == torch.float64
    torch.testing.assert_close(eps.float(), reference["eps"], rtol=1e-4, atol=1e-5)
    assert wide.shape == (1, 3, 16, 24)


def test_rejects_unsupported_model_type(reference):
    with pytest.raises(ValueError, match="bayesian"):
        DDPMUNet.from_config(dict(reference["config"]["model"], type="bayesian"))
