"""Equivalence with the reference DDRM operators (tests/data/ddrm_reference.pt, float64)."""
from pathlib import Path

import pytest
import torch

import degradations

REFERENCE = torch.load(Path(__file__).parent / "data" / "ddrm_reference.pt", weights_only=True)["cases"]


def operator_for(name, case):
    size = (case["n"], case["n"])
    if name == "inp":
        return degradations.Inpainting(mask=case["mask"], channels=case["C"])
    return degradations.make(name, channels=case["C"], image_size=size)


@pytest.mark.parametrize("name", ["deno", "sr4", "sr16", "color", "inp"])
def test_matches_reference(name):
    case = REFERENCE[name]
    op = operator_for(name, case)
    x = case["x"]
    if "factor" in case:
        assert op.factor == case["factor"]
    assert op.rank == case["m"] == op.singulars().numel()
    torch.testing.assert_close(op.H_pinv(op.H(x)), case["pinv"], rtol=0, atol=1e-10)
    torch.testing.assert_close(op.Ht(op.H(x)), case["HtH"], rtol=0, atol=1e-10)
    # generic spectral forms, not only the direct overrides
    s = op.singulars()
    spectral_pinv = op.V(torch.nn.functional.pad(op.Ut(op.H(x)) / s, (0, op.dim - op.rank)))
    torch.testing.assert_close(spectral_pinv, case["pinv"], rtol=0, atol=1e-10)
    reference_sorted = case["s_sorted"]
    assert torch.all(reference_sorted[:-1] >= reference_sorted[1:])  # the reference sorts descending
    torch.testing.assert_close(s.sort(descending=True).values, reference_sorted, rtol=0, atol=1e-10)
