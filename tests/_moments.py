"""Monte-Carlo moment checks shared by the prior and sampler tests."""
import torch


def assert_moments(draws, mean, cov):
    """Sample mean and covariance within 4 Monte-Carlo standard errors of the exact values, entry by entry."""
    n = draws.shape[0]
    var = cov.diagonal()
    z_mean = (draws.mean(0) - mean) / (var / n).sqrt()
    z_cov = (torch.cov(draws.T) - cov) / ((var[:, None] * var[None] + cov**2) / n).sqrt()
    assert z_mean.abs().max() < 4 and z_cov.abs().max() < 4, (z_mean.abs().max(), z_cov.abs().max())
