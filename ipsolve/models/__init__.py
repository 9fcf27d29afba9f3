
from .unet import DDPMUNet
from .loading import load_model
from .priors import GaussianMixturePrior, GaussianPrior
