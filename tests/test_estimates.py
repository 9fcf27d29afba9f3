"""The memory estimate against hand counts: the solver's state is linear in batch (samples) and pixels;
one UNet call keeps every skip map (linear in batch and pixels), its working maps (six of the widest up-block
input) and one attention matrix pair (quadratic in the pixels of its level).

The maps are counted by hand from the architecture in the model's YAML config (a DDPM UNet: conv_in, then
per level its ResnetBlocks and, but at the last level, a stride-2 downsample; the up path concatenates each
skip to its input). ipsolve has no time estimate.
"""
from pathlib import Path

import pytest
import torch
import yaml

import ipsolve
from ipsolve.models.unet import DDPMUNet
from ipsolve.resources import estimate_bytes, unet_forward_bytes

CONFIGS = Path(ipsolve.__file__).parent / "configs" / "models"
WEIGHTS = Path(ipsolve.__file__).parent / "weights"


def unet_from(config_file):
    """The DDPM UNet of a model config, without memory for its weights (meta tensors)."""
    config = yaml.safe_load(Path(config_file).read_text())
    with torch.device("meta"):
        return DDPMUNet.from_config(config["model"], image_size=config["data"]["image_size"])


class Holder(torch.nn.Module):
    """A model the way load_model returns one: the UNet inside."""

    def __init__(self, unet):
        super().__init__()
        self.net = unet


def values(kept, widest_input, attention_side):
    """Values of one image's UNet call: the kept maps [(channels, side)], six working maps as large as the
    widest up-block input (channels, side), the scores and softmax of a (side², side²) attention."""
    channels, side = widest_input
    return sum(c * s * s for c, s in kept) + 6 * channels * side * side + 2 * attention_side ** 4


# CelebA-HQ 256: ch 128, ch_mult [1, 1, 2, 2, 4, 4], 2 ResnetBlocks a level, attention at 16×16.
CELEBA_KEPT_256 = [(128, 256),                            # conv_in
                   (128, 256), (128, 256), (128, 128),    # level 0: two blocks, the downsampled map
                   (128, 128), (128, 128), (128, 64),     # level 1
                   (256, 64), (256, 64), (256, 32),       # level 2
                   (256, 32), (256, 32), (256, 16),       # level 3
                   (512, 16), (512, 16), (512, 8),        # level 4 (the attention level)
                   (512, 8), (512, 8)]                    # level 5: no downsample
# the widest up-block input: at 256×256, the 128 upsampled channels of level 1 and a 128-channel skip
CELEBA_WIDEST_256 = (128 + 128, 256)


def test_the_unet_term_for_celeba_hq_is_the_hand_count_at_batch_1_and_3():
    unet = unet_from(CONFIGS / "celeba_hq.yml")
    one = values(CELEBA_KEPT_256, CELEBA_WIDEST_256, 16)
    assert one == 35_291_136 + 6 * 16_777_216 + 131_072
    assert unet_forward_bytes(unet, 256, 256, 1) == 4 * one
    assert unet_forward_bytes(unet, 256, 256, 3) == 3 * 4 * one
    solver = 16 * 3 * 256 * 256 * 8  # 16 float64 images of state per sample
    assert estimate_bytes(Holder(unet), (3, 256, 256), 1) == solver + 4 * one
    assert estimate_bytes(Holder(unet), (3, 256, 256), 3) == 3 * (solver + 4 * one)


@pytest.mark.parametrize("side", [32, 64])
def test_the_embedded_models_terms_are_the_hand_count_at_two_sizes(side):
    """ch 32, ch_mult [1, 2, 2], one ResnetBlock a level, attention at level 2 (8×8 at training size)."""
    s = side
    kept = [(32, s), (32, s), (32, s // 2), (64, s // 2), (64, s // 4), (64, s // 4)]
    widest = (64 + 32, s)  # at full size, level 1's 64 upsampled channels and level 0's 32-channel block output
    one = values(kept, widest, s // 4)
    assert one == {32: 98_304 + 6 * 98_304 + 8_192, 64: 393_216 + 6 * 393_216 + 131_072}[side]
    model = Holder(unet_from(WEIGHTS / "embedded_mnist32.yml"))
    for batch in (1, 2, 5):
        assert estimate_bytes(model, (1, s, s), batch) == batch * (16 * s * s * 8 + 4 * one)


def test_a_unet_whose_levels_hold_no_resnet_block_is_the_hand_count():
    """ch 32, ch_mult [1, 2], no ResnetBlock on the way down, no attention resolution: the channels stay 32
    down to the middle, whose attention at 16×16 is the only one."""
    with torch.device("meta"):
        unet = DDPMUNet(ch=32, out_ch=1, ch_mult=[1, 2], num_res_blocks=0, attn_resolutions=[], image_size=32,
                        in_channels=1)
    kept = [(32, 32), (32, 16)]  # conv_in, the downsampled map
    widest = (64 + 32, 32)       # at 32×32: the 64 channels of the level-1 up block and conv_in's 32
    assert unet_forward_bytes(unet, 32, 32, 2) == 2 * 4 * values(kept, widest, 16)


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 48, 64)])
def test_a_model_without_a_unet_is_estimated_by_the_solver_state_alone(shape):
    channels, height, width = shape
    prior = type("Prior", (), {"alphas_cumprod": torch.ones(10)})()
    network = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3))  # a module, but no DDPM UNet
    for batch in (1, 3):
        assert estimate_bytes(prior, shape, batch) == 16 * batch * channels * height * width * 8
        assert estimate_bytes(network, shape, batch) == 16 * batch * channels * height * width * 8
