"""The random paths of DDRM and Nested Diffusion against re-implementations written here from the published
formulas, fed the same draws; and the state that every inner run of Nested Diffusion starts from.

The reference tests of DDRM (test_ddrm_reference.py) replace every draw by zero, so they cannot see η, η_b
or the spread terms multiply the wrong draw. Here a small operator with explicit orthogonal factors and
singular values spread over a decade puts, at the low timesteps, some coordinates on each side of σ_y, so
one run goes through all three update rules with nonzero draws.
"""
import math

import pytest
import torch

import solvers
from _toy_ops import random_gaussian_prior

SHAPE = (1, 3, 4)  # D = 12
SINGULARS = torch.tensor([5.0, 0.2, 1.3, 0.45, 2.4, 0.7, 0.3, 1.0], dtype=torch.float64)  # k = 8, unsorted
# Many steps where σ_{t'} crosses σ_y / s_i for σ_y = 0.1 (σ_t ≈ 0.34 at t = 100, 0.047 at t = 10).
GRID = [999, 600, 300, 150, 100, 60, 40, 25, 15, 8, 3, 0]


def generator(seed):
    return torch.Generator().manual_seed(seed)


class ExplicitOperator:
    """H = U diag(s) V[:, :k]ᵀ with U (k × k) and V (D × D) random orthogonal matrices, as plain matrices."""

    def __init__(self, singulars, input_shape, seed=0, identity=False):
        g = generator(seed)
        dim, k = math.prod(input_shape), singulars.numel()
        self.input_shape, self.measurement_shape = tuple(input_shape), (k,)
        if identity:  # U = V = I (needs k = D): denoising with gains s
            self.right, self.left = torch.eye(dim, dtype=torch.float64), torch.eye(k, dtype=torch.float64)
        else:
            self.right = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
            self.left = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))[0]
        self.s = singulars.clone()
        self.matrix = self.left @ torch.diag(self.s) @ self.right[:, :k].T

    def singulars(self):
        return self.s.clone()

    def H(self, x):
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def Vt(self, x):
        return x.reshape(x.shape[0], -1) @ self.right

    def V(self, z):
        return (z @ self.right.T).reshape(z.shape[0], *self.input_shape)

    def Ut(self, y):
        return y.reshape(y.shape[0], -1) @ self.left

    def U(self, w):
        return w @ self.left.T


class Draws:
    """noise(shape): standard normals from a seeded generator, recording every requested shape."""

    def __init__(self, seed):
        self.generator, self.shapes = generator(seed), []

    def __call__(self, shape):
        self.shapes.append(tuple(shape))
        return torch.randn(tuple(shape), generator=self.generator, dtype=torch.float64)


class InputRecorder:
    """Wraps an ε-model and records (x, t, cond) of every call."""

    def __init__(self, model):
        self.model, self.alphas_cumprod = model, model.alphas_cumprod
        self.calls = []

    def __call__(self, x, t, *cond):
        self.calls.append((x.clone(), int(t[0]), cond[0] if cond else None))
        return self.model(x, t)


def reference_ddrm(model, y, op, sigma_y, timesteps, eta, eta_b, draw):
    """DDRM coordinate by coordinate, with the reference's draws: n (B×D) for the initialisation, then per
    step z (B×D), z' (B×|less noisy|), z'' (B×k)."""
    batch, dim, k = y.shape[0], op.right.shape[0], op.s.numel()
    s = op.s.tolist()
    u = (y.reshape(batch, -1) @ op.left).tolist()
    y_bar = [[u[b][i] / s[i] for i in range(k)] for b in range(batch)]

    def abar(t):
        return 1.0 if t < 0 else float(model.alphas_cumprod[t])

    a = abar(timesteps[0])
    sigma = math.sqrt((1 - a) / a)
    n = draw((batch, dim)).tolist()
    x_bar = [[y_bar[b][i] + math.sqrt(sigma**2 - sigma_y**2 / s[i]**2) * n[b][i]
              if i < k and s[i] * sigma > sigma_y else sigma * n[b][i] for i in range(dim)] for b in range(batch)]
    x = math.sqrt(a) * (torch.tensor(x_bar, dtype=torch.float64) @ op.right.T).reshape(batch, *op.input_shape)
    for t, t_next in zip(timesteps, timesteps[1:] + [-1]):
        a, a_next = abar(t), abar(t_next)
        eps = model(x, torch.full((batch,), t))
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        c, e = (x0.reshape(batch, -1) @ op.right).tolist(), (eps.reshape(batch, -1) @ op.right).tolist()
        sn = math.sqrt((1 - a_next) / a_next)
        less = [i for i in range(k) if s[i] * sn < sigma_y]
        more = [i for i in range(k) if s[i] * sn > sigma_y]
        z, z_less, z_more = draw((batch, dim)).tolist(), draw((batch, len(less))).tolist(), draw((batch, k)).tolist()
        new = [[0.0] * dim for _ in range(batch)]
        for b in range(batch):
            for i in range(dim):
                if i in less:
                    residual = (u[b][i] - s[i] * c[b][i]) / sigma_y
                    new[b][i] = c[b][i] + sn * math.sqrt(1 - eta**2) * residual + eta * sn * z_less[b][less.index(i)]
                elif i in more:
                    spread = math.sqrt(sn**2 - eta_b**2 * sigma_y**2 / s[i]**2)
                    new[b][i] = eta_b * y_bar[b][i] + (1 - eta_b) * c[b][i] + spread * z_more[b][i]
                else:
                    new[b][i] = c[b][i] + sn * math.sqrt(1 - eta**2) * e[b][i] + eta * sn * z[b][i]
        x = math.sqrt(a_next) * (torch.tensor(new, dtype=torch.float64) @ op.right.T).reshape(batch, *op.input_shape)
    return x


@pytest.fixture(scope="module")
def problem():
    prior = random_gaussian_prior(SHAPE, generator(0))
    op = ExplicitOperator(SINGULARS, SHAPE, seed=1)
    clean = op.H(prior.sample(3, generator(2)))
    return prior, op, clean, torch.randn(clean.shape, generator=generator(3), dtype=torch.float64)


def test_the_grid_visits_all_three_update_rules(problem):
    """Guard for the comparison below: some step has less-noisy and noisier coordinates at once."""
    prior, _, _, _ = problem
    abar = prior.alphas_cumprod
    sigmas = [math.sqrt((1 - abar[t]) / abar[t]) for t in GRID[1:]]
    mixed = [sn for sn in sigmas if (SINGULARS * sn < 0.1).any() and (SINGULARS * sn > 0.1).any()]
    assert len(mixed) >= 4


@pytest.mark.parametrize("eta,eta_b,sigma_y", [(0.85, 1.0, 0.1), (0.4, 0.6, 0.1), (1.0, 0.3, 0.1),
                                               (0.0, 1.0, 0.1), (0.85, 1.0, 0.0), (0.5, 0.5, 0.0)])
def test_ddrm_with_random_draws_equals_the_formulas(problem, eta, eta_b, sigma_y):
    prior, op, clean, n = problem
    y = clean + sigma_y * n
    draws, reference_draws = Draws(7), Draws(7)
    out = solvers.ddrm(prior, y, op, sigma_y, GRID, eta=eta, eta_b=eta_b, noise=draws)
    expected = reference_ddrm(prior, y, op, sigma_y, GRID, eta, eta_b, reference_draws)
    assert draws.shapes == reference_draws.shapes  # the draw order: n, then per step z, z', z''
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_ddrm_draws_follow_the_reference_shapes(problem):
    prior, op, clean, _ = problem
    draws = Draws(0)
    solvers.ddrm(prior, clean, op, 0.1, [100, 20, 0], noise=draws)
    abar = prior.alphas_cumprod
    less = [int((SINGULARS * math.sqrt((1 - abar[t]) / abar[t]) < 0.1).sum()) for t in (20, 0)] + [8]
    assert less == [5, 8, 8]  # σ_20 ≈ 0.079: the five coordinates with s < 1.26; σ_0 ≈ 0.01 and σ_{−1} = 0: all
    assert draws.shapes == [(3, 12)] + sum([[(3, 12), (3, m), (3, 8)] for m in less], [])


class ZeroEps:
    """ε̂ ≡ 0 on the linear schedule: from x_t = 0 the prediction x̂₀ is 0."""

    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)

    def __call__(self, x, t):
        return torch.zeros_like(x)


@pytest.mark.parametrize("t,t_next,eta,eta_b", [(600, 300, 0.85, 0.6), (100, 20, 0.6, 1.0), (100, 20, 0.3, 0.5)])
def test_one_ddrm_step_has_the_closed_form_mean_and_variance(t, t_next, eta, eta_b):
    """Denoising (U = V = I, s = 1) from x_t = 0, so x̂₀ = 0: noisier than y (σ' > σ_y) the step gives
    x̄' = η_b y + √(σ'² − η_b²σ_y²) z''; less noisy, x̄' = σ'√(1−η²) y/σ_y + η σ' z'. x̄' = x_{t'}/√ᾱ' is
    what the model sees at its second call; 4000 draws."""
    model, sigma_y, count = ZeroEps(), 0.2, 4000
    op = ExplicitOperator(torch.ones(4, dtype=torch.float64), (1, 2, 2), identity=True)
    y = torch.full((count, 4), 0.3, dtype=torch.float64)
    seen = []
    solvers.ddrm(model, y, op, sigma_y, [t, t_next], eta=eta, eta_b=eta_b, generator=generator(t),
                 x_T=torch.zeros(count, 1, 2, 2, dtype=torch.float64), callback=lambda info: seen.append(info["x"]))
    a_next = float(model.alphas_cumprod[t_next])
    x_bar = seen[1].reshape(count, -1) / math.sqrt(a_next)
    sn = math.sqrt((1 - a_next) / a_next)
    if sn > sigma_y:
        mean, var = eta_b * 0.3, sn**2 - eta_b**2 * sigma_y**2
    else:
        mean, var = sn * math.sqrt(1 - eta**2) * 0.3 / sigma_y, (eta * sn) ** 2
    assert (t_next == 300) == (sn > sigma_y)
    assert (x_bar.mean(0) - mean).abs().max() < 4 * math.sqrt(var / count)
    assert (x_bar.var(0) / var - 1).abs().max() < 4 * math.sqrt(2 / count)


# ---------------------------------------------------------------------------------------------- nested

def ddim_outer_step(x, x0, a, a_next, eta_outer, z):
    """x_{t'} = √ᾱ' x̂₀ + √(1−ᾱ'−σ²) ε̂ + σ z, ε̂ = (x_t − √ᾱ x̂₀)/√(1−ᾱ), σ = η_o √((1−ᾱ')/(1−ᾱ)) √(1−ᾱ/ᾱ')."""
    a, a_next = float(a), float(a_next)
    eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    sigma = eta_outer * math.sqrt((1 - a_next) / (1 - a)) * math.sqrt(1 - a / a_next)
    return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next - sigma**2) * eps + sigma * z


def first_inputs(model, run):
    """The input of the first model call of every inner run."""
    starts, total = [], 0
    for grid in run.inner_timesteps:
        starts.append(model.calls[total][0])
        total += len(grid)
    return starts


@pytest.mark.parametrize("eta_outer", [0.0, 0.5, 1.0])
def test_outer_step_adds_eta_outer_noise_and_the_next_inner_run_starts_there(eta_outer):
    prior = random_gaussian_prior(SHAPE, generator(4))
    model, draws = InputRecorder(prior), Draws(5)
    x_T = torch.randn(3, *SHAPE, generator=generator(6), dtype=torch.float64)
    run = solvers.nested(model, "ddim", outer_steps=3, inner_steps=2, x_T=x_T, eta_outer=eta_outer, noise=draws)
    previews = list(run)
    # DDIM inner runs with η = 0 draw nothing; an outer step draws one z of the batch's shape when η_o > 0
    assert draws.shapes == ([(3, *SHAPE)] * 2 if eta_outer > 0 else [])
    zs, abar = Draws(5), prior.alphas_cumprod
    starts = first_inputs(model, run)
    assert torch.equal(starts[0], x_T)
    for k, (before, after) in enumerate(zip(previews, previews[1:]), start=1):
        z = zs((3, *SHAPE)) if eta_outer > 0 else torch.zeros(3, *SHAPE, dtype=torch.float64)
        expected = ddim_outer_step(before.x, before.x0, abar[before.t], abar[after.t], eta_outer, z)
        torch.testing.assert_close(after.x, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(starts[k], expected, rtol=1e-10, atol=1e-10)


def test_outer_noise_has_the_closed_form_variance():
    """η_o = 1 from a fixed state: x_{t'} − mean has variance σ² = (1−ᾱ')/(1−ᾱ) (1−ᾱ/ᾱ') per pixel."""
    prior = random_gaussian_prior(SHAPE, generator(4))
    x_T = torch.randn(1, *SHAPE, generator=generator(6), dtype=torch.float64).expand(4000, -1, -1, -1)
    run = solvers.nested(prior, "ddim", outer_steps=2, inner_steps=2, x_T=x_T, eta_outer=1.0, generator=generator(8))
    first, second = list(run)
    a, a_next = float(prior.alphas_cumprod[first.t]), float(prior.alphas_cumprod[second.t])
    var = (1 - a_next) / (1 - a) * (1 - a / a_next)
    mean = ddim_outer_step(first.x[:1], first.x0[:1], a, a_next, 1.0, torch.zeros(1, *SHAPE, dtype=torch.float64))
    deviation = (second.x - mean).flatten(1)
    assert (deviation.mean(0).abs() < 4 * math.sqrt(var / 4000)).all()
    assert ((deviation.var(0) / var - 1).abs() < 4 * math.sqrt(2 / 4000)).all()


def test_inner_ddrm_runs_start_from_the_kept_outer_state_with_the_kept_measurements(problem):
    """After keep([3, 1]) the next inner DDRM run starts from the DDIM step of the kept candidates' (x, x̂₀)
    and uses their measurements: with all draws zero it equals plain DDRM from that state on y[rows]."""
    prior, op, _, _ = problem
    y = op.H(prior.sample(4, generator(9)))  # four distinct measurements, one per candidate
    model = InputRecorder(prior)
    rows = [3, 1, 3, 1]
    run = solvers.nested(model, "ddrm", outer_steps=3, inner_steps=3, y=y, op=op, sigma_y=0.05, noise=torch.zeros,
                         hook=lambda preview, run: run.keep([3, 1]) if preview.step == 1 else None)
    previews = list(run)
    starts, abar = first_inputs(model, run), prior.alphas_cumprod
    zero = torch.zeros(4, *SHAPE, dtype=torch.float64)
    start = ddim_outer_step(previews[0].x[rows], previews[0].x0[rows], abar[previews[0].t], abar[previews[1].t],
                            0.0, zero)
    torch.testing.assert_close(starts[1], start, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(previews[1].x, start, rtol=1e-10, atol=1e-10)
    plain = solvers.ddrm(prior, y[rows], op, 0.05, run.inner_timesteps[1], x_T=start, noise=torch.zeros)
    torch.testing.assert_close(previews[1].x0, plain, rtol=1e-10, atol=1e-10)
    start = ddim_outer_step(previews[1].x, previews[1].x0, abar[previews[1].t], abar[previews[2].t], 0.0, zero)
    torch.testing.assert_close(starts[2], start, rtol=1e-10, atol=1e-10)
    plain = solvers.ddrm(prior, y[rows], op, 0.05, run.inner_timesteps[2], x_T=start, noise=torch.zeros)
    torch.testing.assert_close(previews[2].x0, plain, rtol=1e-10, atol=1e-10)


def test_keep_replicates_a_tensor_cond_and_leaves_other_conds_alone():
    prior = random_gaussian_prior(SHAPE, generator(4))
    x_T = torch.randn(4, *SHAPE, generator=generator(6), dtype=torch.float64)
    per_row = torch.arange(8.0).reshape(4, 2)
    for cond, expected in [(per_row, per_row[[2, 0, 2, 0]]), (per_row[:1], per_row[:1]), ("a cat", "a cat")]:
        model = InputRecorder(prior)
        list(solvers.nested(model, "ddim", outer_steps=2, inner_steps=2, x_T=x_T, cond=cond,
                            hook=lambda preview, run: run.keep([2, 0]) if preview.step == 1 else None))
        seen = [c for _, _, c in model.calls]
        assert len(seen) == 4
        for before in seen[:2]:
            assert before is cond
        for after in seen[2:]:
            if torch.is_tensor(expected):
                assert torch.equal(after, expected)
            else:
                assert after == expected


def test_outer_draws_come_from_the_generator():
    """With a generator (no noise callable) the outer steps draw from it, in order: runs repeat and equal
    the formula with z taken from a fresh generator of the same seed."""
    prior = random_gaussian_prior(SHAPE, generator(4))
    x_T = torch.randn(2, *SHAPE, generator=generator(6), dtype=torch.float64)
    previews = list(solvers.nested(prior, "ddim", outer_steps=3, inner_steps=2, x_T=x_T, eta_outer=0.7,
                                   generator=generator(10)))
    source, abar = generator(10), prior.alphas_cumprod
    for before, after in zip(previews, previews[1:]):
        z = torch.randn((2, *SHAPE), generator=source, dtype=torch.float64)
        expected = ddim_outer_step(before.x, before.x0, abar[before.t], abar[after.t], 0.7, z)
        torch.testing.assert_close(after.x, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("source", ["generator", "noise"])
def test_generation_starts_from_noise_of_the_given_shape_drawn_from_the_given_source(source):
    prior = random_gaussian_prior(SHAPE, generator(4))
    draws = Draws(12)
    randomness = {"generator": generator(12)} if source == "generator" else {"noise": draws}
    run = solvers.nested(prior, "ddpm", outer_steps=2, inner_steps=2, shape=(3, *SHAPE), dtype=torch.float64,
                         **randomness)
    expected = torch.randn((3, *SHAPE), generator=generator(12), dtype=torch.float64)
    assert torch.equal(next(run).x, expected)
    assert draws.shapes[:1] == ([(3, *SHAPE)] if source == "noise" else [])


def test_ddrm_is_the_default_inner_sampler(problem):
    prior, op, clean, _ = problem
    kwargs = dict(outer_steps=2, inner_steps=3, y=clean, op=op, sigma_y=0.05, noise=torch.zeros)
    assert torch.equal(list(solvers.nested(prior, **kwargs))[-1].x0, list(solvers.nested(prior, "ddrm", **kwargs))[-1].x0)


def test_a_custom_inner_grid_is_used():
    prior = InputRecorder(random_gaussian_prior(SHAPE, generator(4)))
    x_T = torch.randn(2, *SHAPE, generator=generator(6), dtype=torch.float64)
    run = solvers.nested(prior, "ddim", outer_timesteps=[900, 400], inner_steps=3, x_T=x_T,
                         inner_grid=lambda t, count: [t - 10 * i for i in range(count)])
    list(run)
    assert run.inner_timesteps == [[900, 890, 880], [400, 390, 380]]
    assert [t for _, t, _ in prior.calls] == [900, 890, 880, 400, 390, 380]


def test_y_aware_initialisation_at_a_low_time_equals_the_formula(problem):
    """At t = 40 (σ_t ≈ 0.144) with σ_y = 0.1 the coordinates with s_i > σ_y/σ_t ≈ 0.69 are informed by y:
    x̄_i = ȳ_i + √(σ_t² − σ_y²/s_i²) n_i; the others (and the null space) are σ_t n_i; x_t = √ᾱ_t V x̄."""
    prior, op, clean, noise = problem
    y = clean + 0.1 * noise
    x_t = solvers.ddrm_init(prior, y, op, 0.1, 40, noise=Draws(3))
    n = Draws(3)((3, 12))
    a = float(prior.alphas_cumprod[40])
    sigma = math.sqrt((1 - a) / a)
    y_bar = (y @ op.left) / op.s
    x_bar = sigma * n.clone()
    informed = [i for i in range(8) if SINGULARS[i] * sigma > 0.1]
    assert informed == [0, 2, 4, 5, 7]
    for i in informed:
        x_bar[:, i] = y_bar[:, i] + math.sqrt(sigma**2 - 0.1**2 / float(SINGULARS[i]) ** 2) * n[:, i]
    torch.testing.assert_close(x_t, math.sqrt(a) * (x_bar @ op.right.T).reshape(3, *SHAPE), rtol=1e-12, atol=1e-12)


def test_ddrm_passes_cond_to_the_model_and_names_bad_etas(problem):
    prior, op, clean, _ = problem
    model, cond = InputRecorder(prior), object()
    solvers.ddrm(model, clean, op, 0.1, [500, 100, 0], cond=cond, noise=torch.zeros)
    assert [c for _, _, c in model.calls] == [cond] * 3
    with pytest.raises(ValueError, match=r"^eta must lie in \[0, 1\], got 1.5$"):
        solvers.ddrm(prior, clean, op, 0.1, [500, 0], eta=1.5)
    with pytest.raises(ValueError, match=r"^eta_b must lie in \[0, 1\], got -0.1$"):
        solvers.ddrm(prior, clean, op, 0.1, [500, 0], eta_b=-0.1)
