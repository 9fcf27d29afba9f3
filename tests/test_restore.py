"""The restore library behind `ipsolve restore`: previews, NFE marks, budget, batch, vanilla DDRM,
model checks, the output folder and `degrade`."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import degradations
import solvers
from ipsolve.degrade import degrade
from ipsolve.imageio import load_image, to_model
from ipsolve.models.diffusion import DiffusionModel
from ipsolve.models.unet import DDPMUNet
from ipsolve.restore import Preview, check_model_fits, preview_marks, restore
from ipsolve.figures import FONT_SIZE, GAP
from ipsolve.services.run_folder import RunFolder

PRIOR_VARIANCE = 0.25


class GaussianEps:
    """Exact ε-model of the prior N(0, 0.25 I), counting its calls: ε̂ = √(1−ᾱ_t) x / (0.25 ᾱ_t + 1 − ᾱ_t)."""

    def __init__(self):
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.calls = 0

    def __call__(self, x, t):
        self.calls += 1
        a = self.alphas_cumprod.to(x)[t].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (PRIOR_VARIANCE * a + 1 - a)


def measurement_of(op, x, sigma_y, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = op.H(x) + sigma_y * torch.randn(op.H(x).shape, generator=g, dtype=x.dtype)
    return SimpleNamespace(y=y, op=op, sigma_y=sigma_y)


@pytest.fixture
def sr_case():
    op = degradations.make("sr2", channels=1, image_size=(4, 6))
    x = 0.5 * torch.randn(1, 1, 4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return measurement_of(op, x, sigma_y=0.1)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def test_a_preview_after_every_inner_run_and_progress_after_every_call(sr_case):
    model, handed, counted = GaussianEps(), [], []
    previews = restore(sr_case, model, outer=3, inner=4, generator=seeded(), on_preview=handed.append,
                       on_nfe=counted.append)
    assert [p.nfe for p in previews] == [4, 8, 12] == preview_marks(3, 4)
    assert [p.step for p in previews] == [1, 2, 3]
    assert handed == previews
    assert counted == list(range(1, 13)) and model.calls == 12
    assert previews[-1].x0.shape == (1, 1, 4, 6) and previews[-1].x0.dtype == torch.float64


def test_budget_is_shared_over_the_inner_runs_that_fit(sr_case):
    model = GaussianEps()
    previews = restore(sr_case, model, outer=4, inner=3, budget=7, generator=seeded())
    assert [p.nfe for p in previews] == [4, 7] == preview_marks(4, 3, 7) and model.calls == 7
    assert preview_marks(2, 3, budget=6) == [3, 6]


def test_budget_smaller_than_one_inner_run_or_larger_than_all_is_refused(sr_case):
    with pytest.raises(ValueError, match="smaller than one inner run"):
        restore(sr_case, GaussianEps(), outer=2, inner=5, budget=4)
    with pytest.raises(ValueError, match="more than 2 outer x 3 inner steps = 6 NFE"):
        restore(sr_case, GaussianEps(), outer=2, inner=3, budget=7)


@pytest.mark.parametrize("outer, inner", [(0, 3), (2, 0)])
def test_schedules_without_steps_are_refused(outer, inner):
    with pytest.raises(ValueError, match="at least 1"):
        preview_marks(outer, inner)


def test_vanilla_ddrm_hands_out_its_x0_at_the_nested_marks_and_ends_on_its_result(sr_case):
    model = GaussianEps()
    previews = restore(sr_case, model, outer=2, inner=5, vanilla=True, generator=seeded(3))
    assert [p.nfe for p in previews] == [5, 10] and model.calls == 10
    expected = solvers.ddrm(GaussianEps(), sr_case.y, sr_case.op, 0.1, list(range(900, -1, -100)),
                            generator=seeded(3))
    torch.testing.assert_close(previews[-1].x0, expected)


def test_vanilla_grid_is_ddrms_cut_to_exactly_the_budget():
    assert solvers.plain_ddrm_timesteps(10) == list(range(900, -1, -100))
    assert solvers.plain_ddrm_timesteps(20) == list(range(950, -1, -50))
    assert solvers.plain_ddrm_timesteps(30) == list(range(957, -1, -33))  # DDRM's own 30-step grid has 31 points


def test_batch_draws_distinct_samples_of_one_measurement_and_seeds_repeat(sr_case):
    first = restore(sr_case, GaussianEps(), outer=2, inner=3, batch=3, generator=seeded(5))[-1].x0
    again = restore(sr_case, GaussianEps(), outer=2, inner=3, batch=3, generator=seeded(5))[-1].x0
    assert first.shape == (3, 1, 4, 6)
    torch.testing.assert_close(first, again)
    assert torch.cdist(first.flatten(1), first.flatten(1)).triu(1)[0, 1:].min() > 1e-3


def test_batch_mean_follows_the_exact_posterior_mean_for_denoising():
    # Prior N(0, v I), y = x + σ n: the posterior mean is v / (v + σ²) · y, pixel by pixel. DDRM is
    # biased with few steps (about 0.15 here at 20 NFE); at 100 NFE its mean is within 0.02.
    op = degradations.make("deno", channels=1, image_size=(4, 4))
    x = 0.5 * torch.randn(1, 1, 4, 4, generator=seeded(2), dtype=torch.float64)
    case = measurement_of(op, x, sigma_y=0.2)
    samples = restore(case, GaussianEps(), outer=2, inner=50, batch=256, generator=seeded(7))[-1].x0
    posterior_mean = PRIOR_VARIANCE / (PRIOR_VARIANCE + 0.2 ** 2) * case.y.reshape(1, 1, 4, 4)
    error = (samples.mean(0, keepdim=True) - posterior_mean).abs().max()
    assert error < 0.05 < posterior_mean.abs().max()


def test_an_exception_from_a_callback_stops_the_run_early(sr_case):
    model, kept = GaussianEps(), []

    def stop_after_two(preview):
        kept.append(preview)
        if preview.step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore(sr_case, model, outer=5, inner=3, generator=seeded(), on_preview=stop_after_two)
    assert [p.nfe for p in kept] == [3, 6] and model.calls == 6


def tiny_unet_model(image_size=16, levels=3):
    net = DDPMUNet(ch=32, out_ch=1, ch_mult=[1] * levels, num_res_blocks=1, attn_resolutions=[],
                   image_size=image_size, in_channels=1)
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    return DiffusionModel(net, alphas, image_shape=(1, image_size, image_size))


def test_model_fits_sizes_divisible_by_its_downsampling():
    model = tiny_unet_model(levels=3)  # two halvings: sizes must be multiples of 4
    check_model_fits(model, (1, 16, 16))
    check_model_fits(model, (1, 8, 28))
    with pytest.raises(ValueError, match="multiples of 4"):
        check_model_fits(model, (1, 16, 18))
    with pytest.raises(ValueError, match="1-channel"):
        check_model_fits(model, (3, 16, 16))


def test_a_model_of_unknown_make_is_probed_at_a_new_size():
    class FixedSize(GaussianEps):
        image_shape = (1, 8, 8)

        def __call__(self, x, t):
            if x.shape[-2:] != (8, 8):
                raise RuntimeError("shape mismatch")
            return super().__call__(x, t)

    check_model_fits(FixedSize(), (1, 8, 8))
    with pytest.raises(ValueError, match="cannot take 8x12"):
        check_model_fits(FixedSize(), (1, 8, 12))


def fake_previews(batch, steps=3, size=(4, 6)):
    g = seeded(4)
    return [Preview(torch.rand(batch, 1, *size, generator=g) * 2 - 1, nfe=2 * k, step=k) for k in range(1, steps + 1)]


def test_run_folder_writes_previews_final_strip_gif_and_record(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.start({"seed": 0})
    previews = fake_previews(batch=1)
    for step, preview in enumerate(previews, 1):
        folder.add_preview(preview, elapsed_s=0.5)
        running = json.loads((folder.path / "run.json").read_text())
        assert running["status"] == "running" and len(running["previews"]) == step and running["nfe"] == 2 * step
    folder.finish({"interrupted": False})
    names = sorted(p.name for p in folder.path.iterdir())
    assert names == [".ipsolve.lock", "anytime.gif", "final.png", "preview_01_nfe002.png", "preview_02_nfe004.png",
                     "preview_03_nfe006.png", "run.json", "strip.png"]
    final = load_image(folder.path / "final.png")
    torch.testing.assert_close(final, load_image(folder.path / "preview_03_nfe006.png"))
    expected = ((previews[-1].x0[0] + 1) / 2).clamp(0, 1).mul(255).round() / 255
    torch.testing.assert_close(final, expected)
    tile_w, tile_h, line = 6 * 43, 4 * 43, FONT_SIZE + 6  # 4×6 previews enlarged ×43 (longer side ≥ 256)
    assert Image.open(folder.path / "strip.png").size == (GAP + 3 * (tile_w + GAP), line + tile_h + GAP)
    with Image.open(folder.path / "anytime.gif") as gif:
        assert gif.n_frames == 3 and gif.size == (GAP + tile_w + GAP, line + tile_h + GAP)
    record = json.loads((folder.path / "run.json").read_text())
    assert record["seed"] == 0 and [p["nfe"] for p in record["previews"]] == [2, 4, 6]
    assert record["status"] == "done"


def test_a_second_run_into_a_folder_in_use_fails_at_once_and_the_first_is_untouched(tmp_path):
    first = RunFolder(tmp_path)
    first.start({"seed": 1})
    first.add_preview(fake_previews(batch=1)[0], elapsed_s=0.0)
    with pytest.raises(ValueError, match="in use by another ipsolve run"):
        RunFolder(tmp_path).start({"seed": 2})
    assert json.loads((tmp_path / "run.json").read_text())["seed"] == 1
    assert (tmp_path / "preview_01_nfe002.png").is_file()
    first.finish({})
    second = RunFolder(tmp_path)  # the folder is free again once the first run ends
    second.start({"seed": 2})
    assert not (tmp_path / "preview_01_nfe002.png").exists()
    second.close()


def test_run_folder_draws_one_strip_row_per_sample_and_replaces_only_what_the_earlier_run_recorded(tmp_path):
    (tmp_path / "preview_09_nfe099.png").write_bytes(b"stale")
    (tmp_path / "run.json").write_text(json.dumps({"status": "done", "previews": [{"file": "preview_09_nfe099.png"}]}))
    (tmp_path / "preview_08_nfe080.png").write_bytes(b"not recorded by that run")
    (tmp_path / "notes.txt").write_text("mine")
    folder = RunFolder(tmp_path)
    folder.start({})
    for preview in fake_previews(batch=2):
        folder.add_preview(preview, elapsed_s=0.0)
    folder.finish({})
    assert not (tmp_path / "preview_09_nfe099.png").exists() and (tmp_path / "notes.txt").exists()
    assert (tmp_path / "preview_08_nfe080.png").read_bytes() == b"not recorded by that run"
    tile_w, tile_h, line = 6 * 43, 4 * 43, FONT_SIZE + 6
    assert Image.open(tmp_path / "strip.png").size == (GAP + 3 * (tile_w + GAP), line + 2 * (tile_h + GAP))
    assert Image.open(tmp_path / "final.png").size == (2 * 8 + 2, 6 + 2)  # 2 samples: a 2-column grid


def test_run_folder_strip_shows_the_measurement_first_and_a_psnr_line_when_the_clean_image_is_known(tmp_path):
    clean = torch.rand(1, 4, 6, generator=seeded(5))
    folder = RunFolder(tmp_path, measurement=clean, clean=clean)
    folder.start({})
    for preview in fake_previews(batch=2):
        folder.add_preview(preview, elapsed_s=0.0)
    folder.finish({})
    tile_w, tile_h, line = 6 * 43, 4 * 43, FONT_SIZE + 6
    strip = Image.open(tmp_path / "strip.png")
    assert strip.size == (GAP + 4 * (tile_w + GAP), line + 2 * (tile_h + line + GAP))
    shown = torch.from_numpy(np.array(strip.convert("L"))).float() / 255
    measurement_tile = shown[line:line + tile_h, GAP:GAP + tile_w]
    expected = clean[0].mul(255).round().div(255).repeat_interleave(43, 0).repeat_interleave(43, 1)
    torch.testing.assert_close(measurement_tile, expected)


def test_degrade_adds_seeded_noise_of_the_given_level_to_hx():
    image = torch.rand(1, 64, 64, generator=seeded(1))
    y, op = degrade(image, "sr2", sigma_y=0.1, seed=3)
    clean = op.H(to_model(image)[None])
    assert y.shape == (1, 1, 32, 32)
    assert abs((y - clean).std().item() - 0.1) < 0.01
    torch.testing.assert_close(degrade(image, "sr2", sigma_y=0.1, seed=3)[0], y)
    torch.testing.assert_close(degrade(image, "sr2", sigma_y=0.0)[0], clean)


def test_degrade_refuses_colorization_of_a_gray_image():
    with pytest.raises(ValueError, match="RGB"):
        degrade(torch.rand(1, 8, 8), "color", sigma_y=0.0)


def test_degrade_uses_the_given_inpainting_mask():
    mask = torch.from_numpy(np.indices((8, 8)).sum(0) % 3 == 0)
    image = torch.rand(1, 8, 8, generator=seeded(0))
    y, op = degrade(image, "inp", sigma_y=0.0, mask=mask)
    torch.testing.assert_close(y.flatten(), to_model(image)[:, mask].flatten())
