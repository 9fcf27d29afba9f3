"""ε-models: the DDPM UNet of DDRM/SDEdit checkpoints, loaders, exact priors, the embedded default."""
from .loading import load_model
from .priors import GaussianMixturePrior, GaussianPrior, IsotropicGaussianPrior
from .unet import DDPMUNet

__all__ = ["DDPMUNet", "GaussianMixturePrior", "GaussianPrior", "IsotropicGaussianPrior", "load_model"]
