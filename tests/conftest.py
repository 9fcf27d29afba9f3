"""Test-wide settings: offline, and one torch thread (the tests use tiny tensors; CI has 2 cores)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the CLI subprocesses

import torch  # noqa: E402

torch.set_num_threads(1)
