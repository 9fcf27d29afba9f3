"""ipsolve: anytime restoration of degraded images with pretrained diffusion models.

Packages: ``degradations`` (exact SVD operators), ``solvers`` (DDRM, DDIM, DDPM, DPM-Solver++, Nested
Diffusion), and this application package (models, metrics, measurement files, evaluation, command line).
"""
__version__ = "0.1.0"
