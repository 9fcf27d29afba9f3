"""Test-wide settings: offline, and one torch thread (the tests use tiny tensors; CI has 2 cores)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the CLI subprocesses

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


# Tiny random-weight Stable Diffusion and DiT folders (diffusers layout), shared by the generation tests.
@pytest.fixture(scope="session")
def sd_folder(tmp_path_factory):
    from tiny_pipelines import write_stable_diffusion
    return str(write_stable_diffusion(tmp_path_factory.mktemp("sd")))


@pytest.fixture(scope="session")
def dit_folder(tmp_path_factory):
    from tiny_pipelines import write_dit
    return str(write_dit(tmp_path_factory.mktemp("dit")))


@pytest.fixture(scope="session")
def sd(sd_folder):
    from ipsolve.models.latent import load_latent_model
    return load_latent_model(sd_folder)


@pytest.fixture(scope="session")
def dit(dit_folder):
    from ipsolve.models.latent import load_latent_model
    return load_latent_model(dit_folder)
