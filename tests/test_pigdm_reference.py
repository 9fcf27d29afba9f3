"""ΠGDM against the authors' released code: NVlabs/RED-diff @ 66482f2 `algos/pgdm.py` run in float64 on a fixed
nonlinear ε-model with recorded draws (tests/data/pigdm_dps_reference.pt, tests/data/README.md), and the
three weights by hand on a model whose x̂₀ is linear in x_t."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import degradations
import solvers
from _toy_ops import linear_alphas_cumprod

DATA = torch.load(Path(__file__).parent / "data" / "pigdm_dps_reference.pt", weights_only=True)
RUNS = DATA["pigdm"]
IDS = [f"{r['op']}-C{r['C']}-eta{r['eta']}-{len(r['timesteps'])}steps" for r in RUNS]
F64 = torch.float64


class ReferenceModel:
    """The file's ε-model: √(1−ᾱ) x / (ᾱ C² + 1 − ᾱ) + tanh(conv2d(x, W, padding=1) + ᾱ B) (DATA["model"])."""

    def __init__(self, channels):
        self.alphas_cumprod = DATA["alphas_cumprod"]
        self.weight, self.bias = DATA["conv"][channels]["W"], DATA["conv"][channels]["B"]

    def __call__(self, x, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        conv = F.conv2d(x, self.weight, padding=1) + a * self.bias.view(1, -1, 1, 1)
        return (1 - a).sqrt() * x / (a * DATA["prior_var"] + 1 - a) + torch.tanh(conv)


def operator(run):
    if run["op"] == "inp":
        return degradations.Inpainting(run["mask"], channels=run["C"])
    return degradations.make(run["op"], channels=run["C"], image_size=(run["n"], run["n"]))


def recorded(draws):
    """noise(shape) handing out the run's recorded draws in order (all zero when it recorded none: η = 0)."""
    queue = list(draws)
    return lambda shape: queue.pop(0) if queue else torch.zeros(shape, dtype=F64)


def relative_error(out, expected):
    return ((out - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_code_weight_is_the_released_code(run):
    op = operator(run)
    y = op.H(run["y_pinv"])
    out = solvers.pigdm(ReferenceModel(run["C"]), y, op, 0.0, run["timesteps"], eta=run["eta"], x_T=run["x_T"],
                        noise=recorded(run["noise"] if run["noise"] is not None else []), weight="code",
                        safeguard=False)
    assert relative_error(out, run["final"]) < 1e-9


@pytest.mark.parametrize("run", RUNS[:3] + RUNS[6:9], ids=IDS[:3] + IDS[6:9])
def test_first_step_of_the_released_code(run):
    """The state after the first step, as the second call sees it (localises a failing run)."""
    op, seen = operator(run), []
    solvers.pigdm(ReferenceModel(run["C"]), op.H(run["y_pinv"]), op, 0.0, run["timesteps"], eta=run["eta"],
                  x_T=run["x_T"], noise=recorded(run["noise"] if run["noise"] is not None else []), weight="code",
                  safeguard=False, callback=lambda info: seen.append(info["x"]))
    assert relative_error(seen[1], run["first_step"]) < 1e-9


@pytest.mark.parametrize("run", RUNS, ids=IDS)
def test_score_weight_is_the_released_code_with_the_score_space_coefficient(run):
    op = operator(run)
    out = solvers.pigdm(ReferenceModel(run["C"]), op.H(run["y_pinv"]), op, 0.0, run["timesteps"], eta=run["eta"],
                        x_T=run["x_T"], noise=recorded(run["noise"] if run["noise"] is not None else []),
                        weight="score", safeguard=False)
    assert relative_error(out, run["final_ipsolve_weight"]) < 1e-9


@pytest.mark.parametrize("run", RUNS[::4], ids=IDS[::4])
def test_measurement_start_from_y_alone_is_the_released_run(run):
    """The released start √ᾱ_T H⁺y + √(1−ᾱ_T) z: its draw z is recovered from the recorded x_T and y_pinv,
    then the whole run is made from y and the draws alone (start="measurement", no x_T)."""
    op, a = operator(run), DATA["alphas_cumprod"][run["timesteps"][0]]
    y = op.H(run["y_pinv"])
    z = (run["x_T"] - a.sqrt() * run["y_pinv"]) / (1 - a).sqrt()
    draws = [z] + (list(run["noise"]) if run["noise"] is not None else [])
    out = solvers.pigdm(ReferenceModel(run["C"]), y, op, 0.0, run["timesteps"], eta=run["eta"], weight="code",
                        safeguard=False, start="measurement", noise=recorded(draws))
    assert relative_error(out, run["final"]) < 1e-9
    start = solvers.pigdm_init(ReferenceModel(run["C"]), y, op, run["timesteps"][0], noise=recorded([z]))
    assert relative_error(start, run["x_T"]) < 1e-12


class LinearModel:
    """ε-model with x̂₀ = g_t x_t (g_t = √ᾱ λ/(ᾱλ + 1 − ᾱ): the prior N(0, λ I)), so J = g_t I."""

    def __init__(self, variance):
        self.alphas_cumprod, self.variance = linear_alphas_cumprod(), variance

    def gain(self, t):
        a = self.alphas_cumprod[t]
        return a.sqrt() * self.variance / (a * self.variance + 1 - a)

    def __call__(self, x, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * self.gain(t[0]) * x) / (1 - a).sqrt()


@pytest.mark.parametrize("weight", ["code", "paper", "score"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_each_weight_by_hand(weight, eta):
    """One step 600 → 300 on 2× block SR with σ_y = 0.2, η = 0 and 0.7 (the noise draw given), the safeguard
    off. By hand: x̂₀ = g x_t, m = r² Hᵀ(r² HHᵀ + σ_y² I)⁻¹(y − H x̂₀) with HHᵀ = I/4 (a 2×2 mean has one
    singular value 1/2), Jᵀm = g m, c₁ = η √((1−ᾱ_s)/(1−ᾱ_t)) √(1−ᾱ_t/ᾱ_s), c₂ = √(1−ᾱ_s−c₁²), ε̂ =
    (x_t − √ᾱ_t x̂₀)/√(1−ᾱ_t), and x_s = √ᾱ_s x̂₀ + c₁ z + c₂ ε̂ + w Jᵀm with w = √ᾱ_s√ᾱ_t ("code"),
    √ᾱ_t ("paper"), √ᾱ_s/√ᾱ_t − c₂/√(1−ᾱ_t) ("score")."""
    model, t, s, sigma_y = LinearModel(3.0), 600, 300, 0.2
    op = degradations.make("sr2", channels=1, image_size=(4, 4))
    gen = torch.Generator().manual_seed(3)
    x_t, z = (torch.randn(2, 1, 4, 4, generator=gen, dtype=F64) for _ in range(2))
    y = torch.randn(2, 1, 2, 2, generator=gen, dtype=F64)
    a, a_s = model.alphas_cumprod[t], model.alphas_cumprod[s]
    g, r2 = model.gain(t), 1 - a
    x0 = g * x_t
    block_mean = F.avg_pool2d(x0, 2)
    w_meas = r2 * (y - block_mean) / (r2 / 4 + sigma_y**2)  # r²(r² HHᵀ + σ_y²)⁻¹(y − H x̂₀)
    m = F.interpolate(w_meas, scale_factor=2, mode="nearest") / 4  # Hᵀ: spread each block's value / 4
    c1 = eta * math.sqrt((1 - a_s) / (1 - a) * (1 - a / a_s))
    c2 = math.sqrt(1 - a_s - c1**2)
    eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
    w = {"code": a_s.sqrt() * a.sqrt(), "paper": a.sqrt(), "score": a_s.sqrt() / a.sqrt() - c2 / (1 - a).sqrt()}[weight]
    expected = a_s.sqrt() * x0 + c1 * z + c2 * eps + w * g * m
    seen = []
    solvers.pigdm(model, y.reshape(2, *op.measurement_shape), op, sigma_y, [t, s], eta=eta, x_T=x_t,
                  noise=recorded([z]), weight=weight, safeguard=False, callback=lambda info: seen.append(info["x"]))
    torch.testing.assert_close(seen[1], expected, rtol=1e-12, atol=1e-12)


class WithoutSVD:
    """The same operator known only through H and Ht (ΠGDM then takes conjugate gradients)."""

    def __init__(self, op):
        self.H, self.Ht, self.input_shape, self.has_svd = op.H, op.Ht, op.input_shape, False


@pytest.mark.parametrize("weight", ["code", "paper", "score"])
@pytest.mark.parametrize("start", ["noise", "measurement"])
def test_conjugate_gradients_equal_the_svd_for_every_weight(weight, start):
    model = ReferenceModel(1)
    op = degradations.make("sr4", channels=1, image_size=(32, 32))
    y = op.H(RUNS[15]["y_pinv"])
    common = dict(eta=0.5, weight=weight, start=start, generator=None)
    out = solvers.pigdm(model, y, op, 0.1, [900, 600, 300, 100], noise=recorded(list(RUNS[16]["noise"])), **common)
    cg = solvers.pigdm(model, y, WithoutSVD(op), 0.1, [900, 600, 300, 100], noise=recorded(list(RUNS[16]["noise"])),
                       **common)
    assert relative_error(cg, out) < 1e-9


@pytest.mark.parametrize("given, message", [
    ({"weight": "papers"}, "weight 'papers' is not one of code, paper, score"),
    ({"start": "pinv"}, "start 'pinv' is not one of noise, measurement"),
    ({"r2": "deepinvs", "weight": "score"}, "r2 'deepinvs' is not one of paper, deepinv"),
    ({"r2": "deepinv"}, r'r2="deepinv" needs weight="score" .*, got \'code\''),
    ({"r2": "deepinv", "weight": "paper"}, r'r2="deepinv" needs weight="score" .*, got \'paper\''),
    ({"guidance_scale": 0.0}, "guidance_scale must be a finite number > 0, got 0.0"),
    ({"guidance_scale": -2.0}, "guidance_scale must be a finite number > 0, got -2.0"),
    ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number > 0, got nan"),
    ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number > 0, got inf")])
def test_unknown_or_invalid_option_is_refused(given, message):
    op = degradations.make("deno", channels=1, image_size=(4, 4))
    with pytest.raises(ValueError, match=message):
        solvers.pigdm(LinearModel(1.0), torch.zeros(1, 16, dtype=F64), op, 0.1, [500], **given)


def test_defaults_are_the_released_weight_and_start_and_the_safeguard_follows_the_weight():
    """Defaults (docs/solvers_benchmark.md): weight "code", start "measurement", and the safeguard off for
    "code", on for "paper" and "score"; each default equals the run that spells it out and differs from the
    other choice (on a prior of variance 20 the safeguard acts)."""
    from ipsolve.models import GaussianPrior

    prior = GaussianPrior(torch.zeros(1, 4, 4, dtype=F64), 20 * torch.eye(16, dtype=F64), linear_alphas_cumprod())
    op = degradations.make("sr2", channels=1, image_size=(4, 4))
    y = op.H(prior.sample(2, torch.Generator().manual_seed(1)))

    def run(**given):
        return solvers.pigdm(prior, y, op, 0.05, solvers.ddrm_timesteps(6), generator=torch.Generator().manual_seed(2),
                             **given)
    default = run()
    assert torch.equal(default, run(weight="code", start="measurement", safeguard=False))
    assert not torch.allclose(default, run(safeguard=True)) and not torch.allclose(default, run(start="noise"))
    for weight in ("paper", "score"):
        assert torch.equal(run(weight=weight), run(weight=weight, safeguard=True))
        assert not torch.allclose(run(weight=weight), run(weight=weight, safeguard=False))


class ZeroSingularOperator:
    """H = diag(2, 0.5, 0) Vᵀ[:3] on 1×2×2 images (U = I), a spectral operator with a zero singular value."""

    def __init__(self):
        self.input_shape, self.measurement_shape = (1, 2, 2), (3,)
        self.v = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(5), dtype=F64))[0]
        self.s = torch.tensor([2.0, 0.5, 0.0], dtype=F64)
        self.matrix = torch.diag(self.s) @ self.v[:, :3].T

    def singulars(self):
        return self.s

    def Vt(self, x):
        return x.reshape(x.shape[0], -1) @ self.v

    def V(self, z):
        return (z @ self.v.T).reshape(z.shape[0], *self.input_shape)

    def Ut(self, y):
        return y.reshape(y.shape[0], -1)

    def U(self, w):
        return w

    def H(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def Ht(self, y):
        return (y @ self.matrix).reshape(y.shape[0], *self.input_shape)


def test_back_projection_at_zero_noise_is_the_pseudo_inverse_also_on_a_zero_singular_value():
    """σ_y = 0, r² = 1: H⁺ r (torch.linalg.pinv of the dense H), 0 along the zero singular value, not NaN."""
    from solvers.pigdm import back_projection

    op = ZeroSingularOperator()
    residual = torch.tensor([[0.3, -1.2, 0.7]], dtype=F64)
    expected = (residual @ torch.linalg.pinv(op.matrix).T).reshape(1, 1, 2, 2)
    torch.testing.assert_close(back_projection(op, 0.0)(residual, 1.0), expected, rtol=1e-12, atol=1e-12)


def test_measurement_start_is_the_least_squares_pseudo_inverse_when_h_ht_is_singular():
    """Without an SVD, H Hᵀ singular (a zero singular value) and y outside H's range: the start's mean is
    still torch.linalg.pinv(H) y, not a conjugate-gradient run diverging on H Hᵀ w = y."""
    op, model, t = ZeroSingularOperator(), ReferenceModel(1), 500
    without = WithoutSVD(op)
    without.input_shape = op.input_shape
    y = torch.tensor([[0.3, -1.2, 0.7]], dtype=F64)  # its third entry is outside the range of H
    zero = torch.zeros(1, *op.input_shape, dtype=F64)
    start = solvers.pigdm_init(model, y, without, t, noise=recorded([zero]))
    expected = (y @ torch.linalg.pinv(op.matrix).T).reshape(1, *op.input_shape)
    torch.testing.assert_close(start, model.alphas_cumprod[t].sqrt() * expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("svd", [True, False])
def test_measurement_start_draws_from_the_generator(svd):
    """pigdm_init(generator=g) = √ᾱ_t H⁺y + √(1−ᾱ_t) z with z = randn(g), by SVD or conjugate gradients."""
    model, t = ReferenceModel(1), 800
    op = degradations.make("sr4", channels=1, image_size=(32, 32))
    y = op.H(RUNS[15]["y_pinv"])
    a = model.alphas_cumprod[t]
    z = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4), dtype=F64)
    start = solvers.pigdm_init(model, y, op if svd else WithoutSVD(op), t, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(start, a.sqrt() * RUNS[15]["y_pinv"] + (1 - a).sqrt() * z, rtol=1e-9, atol=1e-9)
