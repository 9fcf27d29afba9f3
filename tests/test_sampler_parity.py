"""solvers.ddim, solvers.ddpm and solvers.dpm_solver against diffusers' schedulers, run with the same draws.

Checked against diffusers 0.42.1; the schedulers matched are
  - `diffusers/schedulers/scheduling_ddim.py`                DDIMScheduler,
  - `diffusers/schedulers/scheduling_ddpm.py`                DDPMScheduler,
  - `diffusers/schedulers/scheduling_dpmsolver_multistep.py`  DPMSolverMultistepScheduler,
  - `diffusers/schedulers/scheduling_dpmsolver_singlestep.py` DPMSolverSinglestepScheduler,
each driven by its own `set_timesteps` and `step` (the pipeline loop written out here), on a fixed nonlinear
ε-model in float64 with linear β 1e-4…0.02 over 1000 steps. Every state the model sees is compared, and the
result; ipsolve is handed the scheduler's own `timesteps`.

Configuration under which the two coincide (ipsolve's convention: the step after the last timestep goes to
ᾱ = 1, i.e. σ = 0, and returns x̂₀ there):
  - DDIM: `clip_sample=False` (the default True clamps x̂₀ to [−1, 1]; ipsolve never clips),
    `set_alpha_to_one=True` (default: the last step goes to ᾱ = 1), `timestep_spacing="leading"` (default)
    with `steps_offset` < 1000 // N (0 or SD's 1), or "trailing" when N divides 1000: DDIMScheduler steps from t to
    t − 1000 // N whatever its grid, so that must be the next grid point. With `set_alpha_to_one=False`
    (Stable Diffusion's config) its last step goes to ᾱ_0 instead of 1: every state the model sees still
    agrees and the results differ by exactly that last step (test_ddim_with_alpha_to_one_off_...).
    "linspace" spacing (and "trailing" with N not dividing 1000) steps off diffusers' own grid: no match.
  - DDPM: `clip_sample=False`; `variance_type` "fixed_small" = ipsolve "fixedsmall" (β̃), "fixed_large" =
    "fixedlarge" (β), "learned_range" = "learned" (log σ² = f log β + (1−f) log β̃, f = (v+1)/2; diffusers'
    "learned" takes v as the variance itself and has no ipsolve counterpart); a grid that ends at t = 0
    ("leading" spacing with steps_offset 0, or custom timesteps ending at 0): DDPMScheduler adds noise
    whenever t > 0, ipsolve never on the step into ᾱ = 1, so the two agree when that step leaves t = 0
    ("trailing" ends at 1000/N − 1: diffusers' last step there adds √β̃ z, √1e-20 z, for fixed_small, and the
    full √β z for fixed_large; ipsolve returns x̂₀).
    Both draw their noise as torch.randn(shape, generator=g, dtype=float64) (diffusers through
    `randn_tensor` with one CPU generator), one draw per step but the last: two generators seeded alike
    feed both the same draws.
  - DPM-Solver++: `algorithm_type="dpmsolver++"`, `solver_order=2`, `final_sigmas_type="zero"` (the last
    step goes to σ = 0 and is first order there, as ipsolve's), `lower_order_final=True` (the default; for
    order 2 with final σ = 0 it changes nothing in the multistep scheduler and the singlestep one forces
    it), `solver_type="midpoint"` (the default), default "linspace" spacing (999, …, 1000/N: t = 0 is not
    on the grid, the final σ = 0 is ipsolve's t' = −1) or custom timesteps. 2M is
    DPMSolverMultistepScheduler, 2S DPMSolverSinglestepScheduler (its order list [1, 2, 1, 2, …, 1(, 1)] is
    ipsolve's pairing).

Precision: diffusers builds its schedules in float32 (betas, ᾱ, and DPM-Solver's σ, cast to float32 in
`set_timesteps`). Each test first checks diffusers' float32 numbers are ours to float32 accuracy, then sets
the scheduler's attributes (alphas_cumprod, betas, alphas; sigmas for DPM-Solver) to the float64 values,
so all four agree to 1e-9 relative (observed ~1e-14). DPMSolverMultistepScheduler.step also casts the state
to float32 before its update ("upcast", meant for fp16 pipelines); run as is, it agrees to that rounding
(2⁻²⁴ ≈ 6e-8 of a state up to ~4× the size of the result, once per step: observed ≤ 4.2e-7 relative over
7–25 steps, asserted to 2e-6), and with that one cast neutralised (the state wrapped in a tensor subclass
whose .to(float32) keeps float64) to 1e-9. Observed (max over each test's cases, relative to max |diffusers|):
DDIM 0 (bit for bit), DDPM ≤ 5.2e-15, 2M ≤ 6.6e-15 (cast neutralised), 2S ≤ 3.5e-15.
"""
import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")
# numpy 2 on diffusers' np.array(tensor) in the DPM-Solver set_timesteps: not ours, and harmless here
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

import solvers  # noqa: E402

F64 = torch.float64
T = 1000
BETAS = torch.linspace(1e-4, 0.02, T, dtype=F64)
ALPHAS_CUMPROD = torch.cumprod(1 - BETAS, 0)
SHAPE = (2, 3, 8, 8)
RTOL = 1e-9


def seeded(seed):
    return torch.Generator().manual_seed(seed)


class NonlinearEps:
    """ε(x, t) = √(1−ᾱ) x/(ᾱ·0.25 + 1 − ᾱ) + tanh(conv2d(x, W, padding=1) + ᾱ b), W and b fixed seeded draws;
    with `learned` it returns 2C channels: ε then v = tanh(conv2d(x, W_v, padding=1) + (1−ᾱ) b_v) ∈ [−1, 1]."""

    def __init__(self, channels=3, learned=False, seed=0):
        g = seeded(seed)
        self.alphas_cumprod = ALPHAS_CUMPROD
        self.learned_sigma = learned
        self.weight = 0.3 * torch.randn(channels, channels, 3, 3, generator=g, dtype=F64)
        self.bias = torch.randn(channels, generator=g, dtype=F64)
        self.v_weight = 0.5 * torch.randn(channels, channels, 3, 3, generator=g, dtype=F64)
        self.v_bias = torch.randn(channels, generator=g, dtype=F64)

    def __call__(self, x, t):
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        conv = F.conv2d(x, self.weight, padding=1) + a * self.bias.view(1, -1, 1, 1)
        eps = (1 - a).sqrt() * x / (a * 0.25 + 1 - a) + torch.tanh(conv)
        if not self.learned_sigma:
            return eps
        v = torch.tanh(F.conv2d(x, self.v_weight, padding=1) + (1 - a) * self.v_bias.view(1, -1, 1, 1))
        return torch.cat([eps, v], dim=1)


def at(x, t):
    """The model's batch of timesteps for state x at timestep t."""
    return torch.full((x.shape[0],), int(t), dtype=torch.long)


def x_T(seed=1):
    return torch.randn(SHAPE, generator=seeded(seed), dtype=F64)


def ipsolve_run(sampler, model, x, timesteps, **kwargs):
    """(the timesteps called, the states the model saw, the result) of an ipsolve sampler."""
    calls = []
    out = sampler(model, x, timesteps, callback=lambda info: calls.append((info["t"], info["x"].clone())), **kwargs)
    return [t for t, _ in calls], [x for _, x in calls], out


def scheduler_run(scheduler, model, x, step_kwargs=lambda i: {}):
    """The pipeline loop: (timesteps, states the model saw, result) of `scheduler` after set_timesteps."""
    seen = []
    for i, t in enumerate(scheduler.timesteps):
        seen.append(x.clone())
        x = scheduler.step(model(x, at(x, t)), t, x, **step_kwargs(i)).prev_sample
    return [int(t) for t in scheduler.timesteps], seen, x


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max())


def assert_same_run(ours, theirs, rtol=RTOL):
    """Same timesteps, every state the model saw and the result equal to `rtol` relative (to max |theirs|)."""
    assert ours[0] == theirs[0], f"grids differ: ipsolve {ours[0]}, diffusers {theirs[0]}"
    assert len(ours[1]) == len(theirs[1])
    for n, (a, b) in enumerate(zip(ours[1], theirs[1]), start=1):
        assert a.dtype == b.dtype == F64
        err = relative_error(a, b)
        assert err <= rtol, f"state at call {n} (t = {ours[0][n - 1]}): relative error {err:.3g} > {rtol:g}"
    err = relative_error(ours[2], theirs[2])
    assert err <= rtol, f"result: relative error {err:.3g} > {rtol:g}"
    return err


def to_float64(scheduler):
    """Replace the scheduler's float32 schedule by ours in float64, after checking they are the same schedule."""
    torch.testing.assert_close(scheduler.alphas_cumprod.to(F64), ALPHAS_CUMPROD, rtol=1e-5, atol=0)
    scheduler.betas, scheduler.alphas, scheduler.alphas_cumprod = BETAS.clone(), 1 - BETAS, ALPHAS_CUMPROD.clone()
    return scheduler


def sigmas_to_float64(scheduler):
    """DPM-Solver's σ_t = √((1−ᾱ_t)/ᾱ_t) on its grid, then the final σ = 0, in float64 (set_timesteps rounds
    them to float32); checked against the scheduler's own values first."""
    a = ALPHAS_CUMPROD[scheduler.timesteps]
    sigmas = torch.cat([((1 - a) / a).sqrt(), torch.zeros(1, dtype=F64)])
    torch.testing.assert_close(scheduler.sigmas.to(F64), sigmas, rtol=1e-6, atol=0)
    assert scheduler.sigmas[-1] == 0
    scheduler.sigmas = sigmas
    return scheduler


# ------------------------------------------------------------------------------------------------ DDIM

def ddim_scheduler(steps, **config):
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                        clip_sample=False, **config)
    to_float64(scheduler)
    if scheduler.final_alpha_cumprod != 1:  # set_alpha_to_one=False: ᾱ_0, taken in float32 at construction
        torch.testing.assert_close(scheduler.final_alpha_cumprod.to(F64), ALPHAS_CUMPROD[0], rtol=1e-7, atol=0)
        scheduler.final_alpha_cumprod = ALPHAS_CUMPROD[0].clone()
    scheduler.set_timesteps(steps)
    return scheduler


def draws(steps, seed=2):
    g = seeded(seed)
    return [torch.randn(SHAPE, generator=g, dtype=F64) for _ in range(steps)]


@pytest.mark.parametrize("steps,config", [
    (10, {}),  # leading spacing, offset 0: 900, 800, …, 0
    (7, {}),  # 1000 // 7 = 142: 852, 710, …, 0
    (20, {"steps_offset": 1}),  # 951, 901, …, 1
    (10, {"timestep_spacing": "trailing"}),  # 999, 899, …, 99
])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_matches_diffusers_ddim_scheduler(steps, config, eta):
    model, x = NonlinearEps(), x_T()
    z = draws(steps)
    scheduler = ddim_scheduler(steps, **config)
    theirs = scheduler_run(scheduler, model, x, lambda i: {"eta": eta, "variance_noise": z[i]} if eta > 0 else {})
    fed = iter(z)
    ours = ipsolve_run(solvers.ddim, model, x, scheduler.timesteps, eta=eta, noise=lambda shape: next(fed))
    assert_same_run(ours, theirs)
    assert len(ours[0]) == steps and ours[0][-1] - T // steps < 0  # diffusers' last step is to ᾱ = 1 too


def test_ddim_with_alpha_to_one_off_differs_only_in_the_last_step():
    """Stable Diffusion's DDIM config (steps_offset 1, set_alpha_to_one False) ends at ᾱ_0, not 1: all states
    the model sees agree, ipsolve's result is diffusers' last x̂₀ (its `pred_original_sample`), and diffusers'
    result is that x̂₀ taken one more DDIM step (η = 0) to ᾱ_0."""
    model, x = NonlinearEps(), x_T()
    scheduler = ddim_scheduler(10, steps_offset=1, set_alpha_to_one=False)
    theirs = scheduler_run(scheduler, model, x)
    t, x_last = scheduler.timesteps[-1], theirs[1][-1]  # the last call: t = 1
    last = scheduler.step(model(x_last, at(x_last, t)), t, x_last)  # DDIM's step keeps no state: the last one again
    ours = ipsolve_run(solvers.ddim, model, x, scheduler.timesteps)
    assert_same_run((ours[0], ours[1], ours[2]), (theirs[0], theirs[1], last.pred_original_sample))
    assert relative_error(last.prev_sample, theirs[2]) == 0
    a0, a_last = ALPHAS_CUMPROD[0], ALPHAS_CUMPROD[t]
    eps = (x_last - a_last.sqrt() * ours[2]) / (1 - a_last).sqrt()
    assert relative_error(a0.sqrt() * ours[2] + (1 - a0).sqrt() * eps, theirs[2]) <= RTOL
    assert relative_error(ours[2], theirs[2]) > 1e-3


# ------------------------------------------------------------------------------------------------ DDPM

def ddpm_scheduler(variance_type, steps=None, timesteps=None):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02,
                                        beta_schedule="linear", variance_type=variance_type, clip_sample=False)
    to_float64(scheduler)
    scheduler.set_timesteps(steps, timesteps=timesteps)
    return scheduler


VARIANCES = [("fixed_small", "fixedsmall", False), ("fixed_large", "fixedlarge", False),
             ("learned_range", "learned", True)]


@pytest.mark.parametrize("variance_type,variance,learned", VARIANCES)
@pytest.mark.parametrize("grid", [
    {"steps": 10},  # leading: 900, 800, …, 0
    {"steps": 50},  # 980, 960, …, 0
    {"timesteps": [999, 870, 640, 333, 120, 31, 7, 0]},  # custom, uneven
])
def test_ddpm_matches_diffusers_ddpm_scheduler(variance_type, variance, learned, grid):
    model, x = NonlinearEps(learned=learned), x_T()
    scheduler = ddpm_scheduler(variance_type, **grid)
    assert scheduler.timesteps[-1] == 0
    generator = seeded(3)
    theirs = scheduler_run(scheduler, model, x, lambda i: {"generator": generator})
    ours = ipsolve_run(solvers.ddpm, model, x, scheduler.timesteps, variance=variance, generator=seeded(3))
    assert_same_run(ours, theirs)


# ---------------------------------------------------------------------------------------------- DPM-Solver++

class KeepFloat64(torch.Tensor):
    """A tensor whose .to(torch.float32) keeps it as it is: neutralises DPMSolverMultistepScheduler.step's cast
    of the state to float32, so its update runs in float64 like the rest."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and (torch.float32 in args[1:] or kwargs.get("dtype") is torch.float32):
            return args[0]
        return super().__torch_function__(func, types, args, kwargs)


def dpm_scheduler(cls, steps=None, timesteps=None, **config):
    scheduler = cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                    algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", **config)
    to_float64(scheduler)
    scheduler.set_timesteps(steps, timesteps=timesteps)
    return sigmas_to_float64(scheduler)


def plain(run):
    timesteps, seen, out = run
    return timesteps, [x.as_subclass(torch.Tensor) for x in seen], out.as_subclass(torch.Tensor)


DPM_GRIDS = [
    {"steps": 10},  # linspace: 999, 899, …, 100
    {"steps": 7},
    {"steps": 25},
    {"timesteps": solvers.dpm_inner_timesteps(600, 9)},  # a nested run's inner grid, handed to diffusers
]


@pytest.mark.parametrize("grid", DPM_GRIDS)
def test_dpm_solver_2m_matches_diffusers_multistep_in_float64(grid):
    model, x = NonlinearEps(), x_T()
    scheduler = dpm_scheduler(diffusers.DPMSolverMultistepScheduler, **grid)
    theirs = plain(scheduler_run(scheduler, model, x.as_subclass(KeepFloat64)))
    ours = ipsolve_run(solvers.dpm_solver, model, x, scheduler.timesteps, order=2, variant="2M")
    assert_same_run(ours, theirs)


@pytest.mark.parametrize("grid", DPM_GRIDS)
def test_dpm_solver_2m_matches_diffusers_multistep_as_it_runs(grid):
    """The scheduler's own step, float32 cast of the state included: agreement to that rounding."""
    model, x = NonlinearEps(), x_T()
    scheduler = dpm_scheduler(diffusers.DPMSolverMultistepScheduler, **grid)
    theirs = scheduler_run(scheduler, model, x)
    ours = ipsolve_run(solvers.dpm_solver, model, x, scheduler.timesteps, order=2, variant="2M")
    assert_same_run(ours, theirs, rtol=2e-6)


@pytest.mark.parametrize("grid", DPM_GRIDS)
def test_dpm_solver_2s_matches_diffusers_singlestep(grid):
    model, x = NonlinearEps(), x_T()
    scheduler = dpm_scheduler(diffusers.DPMSolverSinglestepScheduler, lower_order_final=True, **grid)
    theirs = scheduler_run(scheduler, model, x)
    ours = ipsolve_run(solvers.dpm_solver, model, x, scheduler.timesteps, order=2, variant="2S")
    assert_same_run(ours, theirs)
