"""K posterior samples per measurement, drawn together in one batch, and what they estimate.

A restorer's x̂₀ is one draw from (an approximation of) p(x₀ | y): sharp, but not the PSNR-optimal answer.
The mean of K draws estimates E[x₀ | y] (its mean squared error is MMSE · (1 + 1/K) for exact draws) and
their per-pixel standard deviation estimates the posterior's. The K draws of a measurement run as K rows of
one batch, measurement-major: `repeat_for_samples(y, K)` puts draw k of measurement b in row b·K + k and
`split_samples` undoes it, so memory and time grow with K as a batch's do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PosteriorEstimate:
    """K samples per measurement (B, K, C, H, W), their mean (B, C, H, W) and per-pixel std (B, C, H, W)."""

    mean: torch.Tensor
    std: torch.Tensor
    samples: torch.Tensor

    @property
    def count(self) -> int:
        """K, the samples per measurement."""
        return self.samples.shape[1]


def estimate(samples: torch.Tensor) -> PosteriorEstimate:
    """The mean and the unbiased per-pixel std (K − 1 denominator) over dim 1 of samples (B, K, …);
    one sample (K = 1) gives a std of zeros, not NaN: there is no spread to see."""
    if samples.dim() < 2 or samples.shape[1] < 1:
        raise ValueError(f"samples must be (B, K, ...) with K ≥ 1, got shape {tuple(samples.shape)}")
    mean = samples.mean(dim=1)
    std = samples.std(dim=1, correction=1) if samples.shape[1] > 1 else torch.zeros_like(mean)
    return PosteriorEstimate(mean, std, samples)


def repeat_for_samples(y: torch.Tensor, samples: int) -> torch.Tensor:
    """y (B, …) → (B·K, …), each measurement K times in a row: row b·K + k is measurement b."""
    check_samples(samples)
    return y.repeat_interleave(samples, dim=0)


def split_samples(x: torch.Tensor, samples: int) -> torch.Tensor:
    """A K-fold batch x (B·K, …) → (B, K, …): [b, k] is row b·K + k, sample k of measurement b."""
    check_samples(samples)
    if x.shape[0] % samples:
        raise ValueError(f"a batch of {x.shape[0]} does not hold {samples} samples per measurement")
    return x.reshape(x.shape[0] // samples, samples, *x.shape[1:])


def sample_estimate(solver, model, y: torch.Tensor, samples: int, **kwargs) -> PosteriorEstimate:
    """Run a restorer (solvers.ddrm, ddnm, pigdm, dps) once on K copies of each measurement in one batch
    and return the `PosteriorEstimate` of its K draws per measurement. kwargs go to the solver as they are:
    an x_T, if given, holds the B·K rows of the K-fold batch."""
    repeated = repeat_for_samples(y, samples)
    check_start(kwargs.get("x_T"), repeated.shape[0], samples)
    return estimate(split_samples(solver(model, y=repeated, **kwargs), samples))


def check_start(x_T, rows: int, samples: int) -> None:
    """A given x_T must start every one of the B·K draws (one row each would be broadcast into K copies)."""
    if x_T is not None and x_T.shape[0] != rows:
        raise ValueError(f"with samples={samples}, x_T needs {rows} rows (K per measurement), got {x_T.shape[0]}")


def check_samples(samples: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a whole number ≥ 1 (draws per measurement), got {samples!r}")
