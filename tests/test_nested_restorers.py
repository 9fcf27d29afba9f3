"""Nested Diffusion with DDNM, ΠGDM and DPS inside: S = 1 is the plain solver, inner runs start from the
outer state, exact call counts, and operators without an SVD."""
import pytest
import torch

import degradations
import solvers
from _toy_ops import Recorder, gaussian_problem


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def options(inner, op, y, sigma_y):
    if inner == "dps":
        return {"y": y, "forward": op, "step_size": 0.5}
    return {"y": y, "op": op, "sigma_y": sigma_y, "eta": 0.7}


def plain(inner, model, op, y, sigma_y, grid, **kwargs):
    kwargs = {**options(inner, op, y, sigma_y), **kwargs}
    return getattr(solvers, inner)(model, timesteps=grid, **kwargs)


@pytest.mark.parametrize("inner", ["ddnm", "pigdm", "dps"])
def test_one_outer_step_is_the_plain_solver(inner):
    prior, op, y = gaussian_problem("sr2", 0.1, batch=2)
    run = solvers.nested(prior, inner, outer_steps=1, inner_steps=8, generator=generator(1),
                         **options(inner, op, y, 0.1))
    (preview,) = list(run)
    expected = plain(inner, prior, op, y, 0.1, run.inner_timesteps[0], generator=generator(1))
    assert torch.equal(preview.x0, expected) and preview.nfe == 8


@pytest.mark.parametrize("option, value", [("safeguard", True), ("safeguard", False), ("clip_x0", True)])
def test_one_outer_step_is_plain_pigdm_with_its_safeguard_or_clamp(option, value):
    """A prior of variance 20 along every direction, where the safeguard changes ΠGDM's steps and x̂₀ leaves
    [−1, 1] (clip_x0)."""
    prior, op, y = gaussian_problem("sr2", 0.1, batch=2)
    prior = type(prior)(prior.means[0], 20 * torch.eye(16, dtype=torch.float64), prior.alphas_cumprod)
    run = solvers.nested(prior, "pigdm", outer_steps=1, inner_steps=6, generator=generator(1), **{option: value},
                         **options("pigdm", op, y, 0.1))
    (preview,) = list(run)
    expected = plain("pigdm", prior, op, y, 0.1, run.inner_timesteps[0], generator=generator(1), **{option: value})
    other = plain("pigdm", prior, op, y, 0.1, run.inner_timesteps[0], generator=generator(1), **{option: not value})
    assert torch.equal(preview.x0, expected) and not torch.allclose(preview.x0, other)


@pytest.mark.parametrize("chosen, others", [({"r2": "deepinv"}, {"r2": "paper"}),
                                            ({"guidance_scale": 2.0}, {"guidance_scale": 1.0})])
def test_one_outer_step_is_plain_pigdm_with_its_covariance_or_guidance_scale(chosen, others):
    """Nested ΠGDM (weight "score") passes r2 and guidance_scale to its inner runs; the other value differs."""
    prior, op, y = gaussian_problem("sr2", 0.1, batch=2)
    run = solvers.nested(prior, "pigdm", outer_steps=1, inner_steps=6, generator=generator(1), weight="score",
                         **chosen, **options("pigdm", op, y, 0.1))
    (preview,) = list(run)
    grid = run.inner_timesteps[0]
    expected = plain("pigdm", prior, op, y, 0.1, grid, generator=generator(1), weight="score", **chosen)
    other = plain("pigdm", prior, op, y, 0.1, grid, generator=generator(1), weight="score", **others)
    assert torch.equal(preview.x0, expected) and not torch.allclose(preview.x0, other)


@pytest.mark.parametrize("weight, start", [("code", "measurement"), ("paper", "noise"), ("score", "measurement")])
def test_one_outer_step_is_plain_pigdm_with_its_weight_and_start(weight, start):
    """Nested ΠGDM passes its weight to the inner runs and starts where plain ΠGDM does; another weight or
    start gives another answer (the options are used, not ignored)."""
    prior, op, y = gaussian_problem("sr2", 0.1, batch=2)
    prior = type(prior)(prior.means[0], 20 * torch.eye(16, dtype=torch.float64), prior.alphas_cumprod)
    run = solvers.nested(prior, "pigdm", outer_steps=1, inner_steps=6, generator=generator(1), weight=weight,
                         start=start, **options("pigdm", op, y, 0.1))
    (preview,) = list(run)
    grid = run.inner_timesteps[0]
    expected = plain("pigdm", prior, op, y, 0.1, grid, generator=generator(1), weight=weight, start=start)
    assert torch.equal(preview.x0, expected)
    other_weight = "code" if weight != "code" else "score"
    other_start = "noise" if start == "measurement" else "measurement"
    for other in ({"weight": other_weight, "start": start}, {"weight": weight, "start": other_start}):
        assert not torch.allclose(preview.x0, plain("pigdm", prior, op, y, 0.1, grid, generator=generator(1), **other))


@pytest.mark.parametrize("inner", ["ddnm", "pigdm", "dps"])
def test_inner_runs_start_from_the_outer_state(inner):
    """Every inner run is the plain solver started at x_T = the outer state (no re-initialisation), and the
    outer step is DDIM (η = 0) from that state and the inner result."""
    prior, op, y = gaussian_problem("sr2", 0.1)
    model = Recorder(prior)
    run = solvers.nested(model, inner, outer_steps=3, inner_steps=4, noise=torch.zeros, **options(inner, op, y, 0.1))
    previews = list(run)
    assert [p.nfe for p in previews] == [4, 8, 12] and len(model.calls) == 12
    for preview, grid in zip(previews, run.inner_timesteps):
        expected = plain(inner, prior, op, y, 0.1, grid, x_T=preview.x, noise=torch.zeros)
        torch.testing.assert_close(preview.x0, expected, rtol=1e-12, atol=1e-12)
    first, second = previews[0], previews[1]
    a, a_next = prior.alphas_cumprod[first.t], prior.alphas_cumprod[second.t]
    eps = (first.x - a.sqrt() * first.x0) / (1 - a).sqrt()
    torch.testing.assert_close(second.x, a_next.sqrt() * first.x0 + (1 - a_next).sqrt() * eps, rtol=1e-12,
                               atol=1e-12)


def test_composed_operator_goes_to_pigdm_and_dps_but_not_to_ddrm_or_ddnm():
    prior, _, _ = gaussian_problem("sr2", 0.0)
    op = degradations.make("deblur_uni+inp", channels=1, image_size=(4, 4), parts=[
        {"name": "deblur_uni", "channels": 1, "image_size": [4, 4], "width": 3},
        {"name": "inp", "channels": 1, "image_size": [4, 4], "seed": 0}])
    y = op.H(prior.sample(1, generator(2)))
    model = Recorder(prior)
    for inner in ("ddrm", "ddnm"):
        with pytest.raises(ValueError, match=f"{inner} needs an operator with an SVD.*pigdm or dps"):
            solvers.nested(model, inner, outer_steps=2, inner_steps=3, y=y, op=op, sigma_y=0.0)
        with pytest.raises(ValueError, match="pigdm or dps"):
            getattr(solvers, inner)(model, y, op, 0.0, [500, 0])
    assert not model.calls
    for inner in ("pigdm", "dps"):
        previews = list(solvers.nested(model, inner, outer_steps=2, inner_steps=3, generator=generator(3),
                                       **options(inner, op, y, 0.0)))
        assert previews[-1].x0.shape == (1, 1, 4, 4) and previews[-1].nfe == 6


def test_restorer_options_are_checked():
    prior, op, y = gaussian_problem("sr2", 0.1)
    with pytest.raises(ValueError, match="forward="):
        solvers.nested(prior, "dps", outer_steps=2, inner_steps=3, y=y)
    with pytest.raises(ValueError, match="eta_b"):
        solvers.nested(prior, "ddnm", outer_steps=2, inner_steps=3, y=y, op=op, sigma_y=0.1, eta_b=1.0)
    with pytest.raises(ValueError, match="x_T or shape"):
        solvers.nested(prior, "dps", outer_steps=2, inner_steps=3, y=y, forward=op.H)
    run = solvers.nested(prior, "dps", outer_steps=2, inner_steps=3, y=y, forward=op.H, shape=(1, 1, 4, 4),
                         generator=generator())
    assert list(run)[-1].x0.dtype == torch.float64


def noise_from(seed):
    g = generator(seed)
    return lambda shape: torch.randn(shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("inner", ["ddnm", "pigdm", "dps"])
def test_one_outer_step_is_the_plain_solver_with_draws_from_a_noise_callable(inner):
    """The starting noise of ddnm, pigdm and dps comes from `noise`, as when they run alone."""
    prior, op, y = gaussian_problem("sr2", 0.1, batch=2)
    run = solvers.nested(prior, inner, outer_steps=1, inner_steps=8, noise=noise_from(1), **options(inner, op, y, 0.1))
    (preview,) = list(run)
    assert torch.equal(preview.x0, plain(inner, prior, op, y, 0.1, run.inner_timesteps[0], noise=noise_from(1)))
