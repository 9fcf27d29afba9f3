"""DDNM / DDNM+ against the reference code's mean paths (tests/data/ddnm_reference.pt), the jump schedule,
call counting over time travel, and the SVD requirement."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import degradations
import solvers
from _toy_ops import DenseOperator, Recorder, gaussian_problem

DATA = torch.load(Path(__file__).parent / "data" / "ddnm_reference.pt", weights_only=True)
RUNS = DATA["runs"]
IDS = [f"{r['op']}-s{r['sigma_y']}-eta{r['eta']}-T{r['T_sampling']}-L{r['travel_length']}R{r['travel_repeat']}"
       for r in RUNS]


class ReferenceModel:
    """The file's ε-model: √(1−ᾱ) x / (ᾱ C² + 1 − ᾱ) + tanh(conv2d(x, W, padding=1) + ᾱ b)."""

    def __init__(self):
        self.alphas_cumprod = torch.cumprod(1 - DATA["betas"], 0)
        self.weight, self.bias, self.var = DATA["conv_weight"], DATA["conv_bias"], DATA["prior_var"]

    def __call__(self, x, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        conv = F.conv2d(x, self.weight, padding=1) + a * self.bias.view(1, -1, 1, 1)
        return (1 - a).sqrt() * x / (a * self.var + 1 - a) + torch.tanh(conv)


def operator(run):
    if run["op"] == "inp":
        return degradations.Inpainting(run["mask"], channels=3)
    return degradations.make(run["op"], channels=3, image_size=(16, 16))


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_reference_mean_paths(run):
    op, model = operator(run), Recorder(ReferenceModel())
    y = op.H(run["y_pinv"])
    steps = solvers.time_travel_timesteps(run["T_sampling"], run["travel_length"], run["travel_repeat"])
    out = solvers.ddnm(model, y, op, run["sigma_y"], steps, eta=run["eta"], x_T=run["x_T"], noise=torch.zeros)
    expected = run["final_corrected"]
    assert (out - expected).norm() / expected.norm() < 1e-8
    downward = sum(b < a for a, b in zip(run["schedule"], run["schedule"][1:]))
    assert len(model.calls) == downward


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_schedule_is_the_reference_jump_schedule(run):
    steps = solvers.time_travel_timesteps(run["T_sampling"], run["travel_length"], run["travel_repeat"])
    assert steps + [-1] == run["schedule"]


def test_each_jump_point_is_reached_travel_repeat_times():
    """4 steps of 250, travel 1 unit, repeat 3: 500, 250 and 0 are each reached three times, jumping one
    unit back up twice after each (by hand from the reference's get_schedule_jump)."""
    assert solvers.time_travel_timesteps(4, 1, 3) == [750, 500, 750, 500, 750, 500, 250, 500, 250, 500, 250,
                                                      0, 250, 0, 250, 0]


@pytest.mark.parametrize("steps, num_train, expected", [
    (1, 1000, [0]), (7, 1000, [852, 710, 568, 426, 284, 142, 0]), (1000, 1000, list(range(999, -1, -1))),
    (5, 50, [40, 30, 20, 10, 0])])
def test_without_travel_the_schedule_is_the_integer_grid(steps, num_train, expected):
    """travel_repeat = 1: (steps − 1 − i)·(T // steps), in ints, for the extreme step counts too."""
    kwargs = {} if num_train == 1000 else {"num_train_steps": num_train}
    grid = solvers.time_travel_timesteps(steps, 3, 1, **kwargs)
    assert grid == expected and all(type(t) is int for t in grid)


@pytest.mark.parametrize("args", [(0, 1, 1), (1001, 1, 1), (10, 0, 2), (10, 3, 0)])
def test_time_travel_arguments_out_of_range_are_refused(args):
    with pytest.raises(ValueError, match="steps must lie in|must be ≥ 1"):
        solvers.time_travel_timesteps(*args)


def published_ddnm(run, rotate):
    """An independent mean path of the reference code from H and H⁺ alone (every operator in the file has
    one singular value s, so λ and the noise factors take one value on the range and one on the null
    space). rotate=False scales ε̂ as the published code does for sr and color: per raw r×r patch (per RGB
    needle), by factors meant for spectral coordinates, then applies V_small (its torch.svd basis), when
    σ_y > 0 (with σ_y = 0 it runs plain DDNM, whose noise term needs no rotation)."""
    op, model = operator(run), ReferenceModel()
    y, sigma_y, eta, x = op.H(run["y_pinv"]), run["sigma_y"], run["eta"], run["x_T"]
    s = float(op.singulars()[0])
    schedule = run["schedule"]
    for t, t_next in zip(schedule, schedule[1:]):
        a_next = model.alphas_cumprod[t_next] if t_next >= 0 else torch.tensor(1.0, dtype=torch.float64)
        if t_next > t:
            x = a_next.sqrt() * x0
            continue
        a = model.alphas_cumprod[t]
        x0 = (x - (1 - a).sqrt() * model(x, torch.tensor([t]))) / a.sqrt()
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        root, sigma = a_next.sqrt(), (1 - a_next).sqrt()
        lam, d2_range, d2_null = 1.0, sigma * math.sqrt(1 - eta**2), sigma * math.sqrt(1 - eta**2)
        if sigma_y > 0 and sigma != root * sigma_y / s:
            d2_range = 0.0
            if sigma < root * sigma_y / s:
                lam = s * sigma * math.sqrt(1 - eta**2) / (root * sigma_y)
        corrected = x0 - lam * op.H_pinv(op.H(x0) - y)
        if rotate or run["op"] in ("deno", "inp") or sigma_y == 0:  # σ_y = 0: its plain DDNM, no scaling
            range_part = op.H_pinv(op.H(eps))
            noise = d2_null * (eps - range_part) + d2_range * range_part
        else:
            noise = unrotated_noise(run["op"], eps, d2_range, d2_null)
        x = root * corrected + noise
    return x


def unrotated_noise(name, eps, d2_range, d2_null):
    batch = eps.shape[0]
    if name == "color":
        v_small = torch.svd(torch.tensor([[0.3333, 0.3334, 0.3333]], dtype=torch.float64), some=False)[2]
        needles = eps.reshape(batch, 3, -1).permute(0, 2, 1)
        scaled = needles * torch.tensor([d2_range, d2_null, d2_null], dtype=torch.float64)
        return (scaled @ v_small.T).permute(0, 2, 1).reshape(eps.shape)
    r, side = 4, eps.shape[-1] // 4
    v_small = torch.svd(torch.full((1, r * r), 1 / r**2, dtype=torch.float64), some=False)[2]
    patches = eps.reshape(batch, 3, side, r, side, r).permute(0, 1, 2, 4, 3, 5).reshape(batch, 3, -1, r * r)
    scaled = patches * torch.tensor([d2_range] + [d2_null] * (r * r - 1), dtype=torch.float64)
    image = (scaled @ v_small.T).reshape(batch, 3, side, side, r, r).permute(0, 1, 2, 4, 3, 5)
    return image.reshape(eps.shape)


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_the_published_code_is_this_without_the_rotation(run):
    """An independent re-implementation gives `final_corrected` with the rotation and `final` without."""
    for rotate, key in ((True, "final_corrected"), (False, "final")):
        out = published_ddnm(run, rotate)
        assert (out - run[key]).norm() / run[key].norm() < 1e-8, key


def test_time_travel_reuses_the_uncorrected_x0():
    """A step up re-noises the last x̂₀ before its range-space correction, with no model call: with zero
    noise, 700 → 600 → 700 → 500 calls the model at 700, then at 700 again on √ᾱ₇₀₀ x̂₀ of the first call."""
    prior, op, y = gaussian_problem("sr2", 0.0)
    infos = []
    solvers.ddnm(prior, y, op, 0.0, [700, 600, 700, 500], eta=0.0, noise=torch.zeros, callback=infos.append)
    assert [i["t"] for i in infos] == [700, 700, 500] and [i["nfe"] for i in infos] == [1, 2, 3]
    a = prior.alphas_cumprod[700]
    torch.testing.assert_close(infos[1]["x"], a.sqrt() * infos[0]["x0"], rtol=1e-12, atol=1e-12)


def test_a_step_up_adds_fresh_noise_in_image_space():
    """700 → 600 → 700: x₇₀₀ = √ᾱ₇₀₀ x̂₀ + √(1−ᾱ₇₀₀) V z, z the second step's draw (x̂₀ of the first call)."""
    prior, op, y = gaussian_problem("sr2", 0.0)
    draws = iter(torch.randn(3, 1, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    infos = []
    solvers.ddnm(prior, y, op, 0.0, [700, 600, 700], eta=0.5, x_T=torch.zeros(1, 1, 4, 4, dtype=torch.float64),
                 noise=lambda shape: next(draws), callback=infos.append)
    z = torch.randn(3, 1, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)[1]
    a = prior.alphas_cumprod[700]
    torch.testing.assert_close(infos[1]["x"], a.sqrt() * infos[0]["x0"] + (1 - a).sqrt() * op.V(z),
                               rtol=1e-12, atol=1e-12)


def test_cond_reaches_every_model_call():
    prior, op, y = gaussian_problem("sr2", 0.1)
    model, label = Recorder(prior), torch.tensor([7])
    solvers.ddnm(model, y, op, 0.1, [700, 400, 700, 100], cond=label, generator=torch.Generator().manual_seed(0))
    assert len(model.calls) == 3 and all(cond is label for _, cond in model.calls)


@pytest.mark.parametrize("kind", ["sr2", "rank-deficient"])
def test_noiseless_ddnm_is_consistent_with_y_and_keeps_the_null_space(kind):
    """σ_y = 0: the result satisfies H x = y exactly, and its null-space part is the last x̂₀'s; also for a
    dense H of rank 4 < m = 6 (k < m)."""
    prior, op, y = gaussian_problem("sr2", 0.0, batch=2)
    if kind == "rank-deficient":
        g = torch.Generator().manual_seed(5)
        left, right = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((6, 4), (4, 16)))
        op = DenseOperator(left @ right / 4, (1, 4, 4))
        y = op.H(prior.sample(2, g))
        assert op.singulars().numel() == 4
    infos = []
    out = solvers.ddnm(prior, y, op, 0.0, solvers.ddrm_timesteps(10), generator=torch.Generator().manual_seed(0),
                       callback=infos.append)
    torch.testing.assert_close(op.H(out), y, rtol=1e-10, atol=1e-10)
    k = op.singulars().numel()
    torch.testing.assert_close(op.Vt(out)[:, k:], op.Vt(infos[-1]["x0"])[:, k:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t_next", [100, 400])
def test_one_step_by_hand_ddnm_plus(t_next):
    """One DDNM+ step from x_t on denoising (H = I, s = 1), written out: at t' = 100 every coordinate is
    less noisy than y (σ' < a'σ_y), at t' = 400 noisier."""
    sigma_y, eta = 0.5, 0.6
    prior, op, y = gaussian_problem("deno", sigma_y)
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(y.shape, generator=g, dtype=torch.float64)
    z = torch.randn(1, 16, generator=g, dtype=torch.float64)
    infos = []
    solvers.ddnm(prior, y, op, sigma_y, [600, t_next], eta=eta, x_T=x_t, noise=lambda shape: z,
                 callback=infos.append)
    eps = prior(x_t, torch.tensor([600]))
    a_t, a_n = prior.alphas_cumprod[600], prior.alphas_cumprod[t_next]
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    a, sigma, z = a_n.sqrt(), (1 - a_n).sqrt(), z.reshape(y.shape)
    if t_next == 100:
        assert sigma < a * sigma_y
        lam = sigma * math.sqrt(1 - eta**2) / (a * sigma_y)
        expected = a * (x0 - lam * (x0 - y)) + sigma * eta * z
    else:
        assert sigma > a * sigma_y
        expected = a * y + (sigma**2 - a**2 * sigma_y**2).sqrt() * z
    torch.testing.assert_close(infos[1]["x"], expected, rtol=1e-12, atol=1e-12)


def test_a_coordinate_exactly_as_noisy_as_y_takes_the_plain_ddnm_step():
    """σ' = a'σ_y/s exactly (denoising, s = 1, σ_y = σ'/a' at t' = 50): neither DDNM+ case applies and the
    published code (`published_ddnm` above) takes the plain DDNM step, λ = 1, x' = a'y + σ'η z + σ'√(1−η²) ε̂."""
    eta = 0.6
    prior, op, y = gaussian_problem("deno", 0.2)
    a_n = prior.alphas_cumprod[50]
    a, sigma = a_n.sqrt(), (1 - a_n).sqrt()
    sigma_y = float(sigma / a)
    assert a * sigma_y == sigma  # exactly, in float64
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(y.shape, generator=g, dtype=torch.float64)
    z = torch.randn(1, 16, generator=g, dtype=torch.float64)
    infos = []
    solvers.ddnm(prior, y, op, sigma_y, [600, 50], eta=eta, x_T=x_t, noise=lambda shape: z, callback=infos.append)
    eps = prior(x_t, torch.tensor([600]))
    expected = a * y + sigma * eta * z.reshape(y.shape) + sigma * math.sqrt(1 - eta**2) * eps
    torch.testing.assert_close(infos[1]["x"], expected, rtol=1e-12, atol=1e-12)


def test_operator_without_svd_fails_at_once():
    prior, op, y = gaussian_problem("sr2", 0.0)
    blind = degradations.compose(op, degradations.make("deno", channels=1, image_size=(2, 2)))
    model = Recorder(prior)
    with pytest.raises(ValueError, match=r"^ddnm needs an operator with an SVD .* use pigdm or dps"):
        solvers.ddnm(model, y, blind, 0.0, [500, 0])
    assert not model.calls


def test_bad_timesteps_and_eta():
    prior, op, y = gaussian_problem("sr2", 0.0)
    for steps in ([500, 500, 0], [500, 600], [1000, 0], []):
        with pytest.raises(ValueError, match="timesteps"):
            solvers.ddnm(prior, y, op, 0.0, steps)
    with pytest.raises(ValueError, match="eta"):
        solvers.ddnm(prior, y, op, 0.0, [500, 0], eta=1.5)


def test_one_timestep_and_eta_one_are_accepted():
    """A single step 500 → ᾱ = 1 is one call; η = 1 (all fresh noise) on noiseless denoising gives
    x_{t'} = a' y + σ' z after the first step."""
    prior, op, y = gaussian_problem("deno", 0.0)
    model = Recorder(prior)
    torch.testing.assert_close(solvers.ddnm(model, y, op, 0.0, [500]), y, rtol=0, atol=1e-12)
    assert len(model.calls) == 1
    z = torch.randn(1, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    infos = []
    solvers.ddnm(prior, y, op, 0.0, [600, 300], eta=1.0, x_T=torch.zeros_like(y), noise=lambda shape: z,
                 callback=infos.append)
    a = prior.alphas_cumprod[300]
    torch.testing.assert_close(infos[1]["x"], a.sqrt() * y + (1 - a).sqrt() * z.reshape(y.shape),
                               rtol=1e-12, atol=1e-12)


def test_callback_contract_dtype_and_generator():
    prior, op, y = gaussian_problem("color", 0.1, shape=(3, 2, 2), batch=2)
    model, infos = Recorder(prior), []
    grid = solvers.ddrm_timesteps(10)
    out = solvers.ddnm(model, y, op, 0.1, grid, generator=torch.Generator().manual_seed(3), callback=infos.append)
    assert len(model.calls) == 10 and [i["t"] for i in infos] == grid
    assert [i["nfe"] for i in infos] == list(range(1, 11))
    assert all(i["x"].shape == i["x0"].shape == (2, 3, 2, 2) for i in infos)
    source = torch.Generator().manual_seed(3)
    again = solvers.ddnm(prior, y, op, 0.1, grid,
                         noise=lambda shape: torch.randn(shape, generator=source, dtype=torch.float64))
    assert torch.equal(out, again)
    source = torch.Generator().manual_seed(3)  # the same float64 draws, cast to float32 by the solver
    out32 = solvers.ddnm(prior, y.float(), op, 0.1, grid,
                         noise=lambda shape: torch.randn(shape, generator=source, dtype=torch.float64))
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, out.float(), rtol=1e-4, atol=1e-4)
