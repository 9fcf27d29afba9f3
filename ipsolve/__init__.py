"""ipsolve: anytime restoration of degraded images with pretrained diffusion models.

Packages: ``degradations`` (exact SVD operators, compositions, a nonlinear sensor), ``solvers`` (DDRM, DDNM,
ΠGDM, DPS, DDIM, DDPM, DPM-Solver++, Nested
Diffusion), and this application package: the library (models, restore(), generate(), metrics,
measurement files), its services (`ipsolve.services`: runs that write run folders, evaluation) and two
front-ends (`ipsolve.cli`, the `ipsolve` command; `ipsolve.studio`, the web page). docs/api.md, "Layout".
"""
__version__ = "0.1.0"
