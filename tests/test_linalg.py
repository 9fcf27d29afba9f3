"""Conjugate gradients (degradations.linalg) against closed forms on diagonal systems: finite termination,
per-row stopping, the least-norm answer when b has no part in A's range, and least_squares = pinv (CG on the normal equations)."""
import torch

from degradations.linalg import conjugate_gradient

F64 = torch.float64


def diagonal(d):
    """apply(x) = d ⊙ x row by row: a batch of diagonal positive semi-definite matrices."""
    return lambda x: d * x


def test_each_row_is_solved_exactly_in_as_many_steps_as_its_distinct_eigenvalues():
    """Rows with eigenvalues {1, 2} and {3, 5}: two CG steps each solve them exactly; the batch taken as one
    system (four distinct eigenvalues) would need four."""
    d = torch.tensor([[1.0, 2.0, 2.0], [3.0, 5.0, 5.0]], dtype=F64)
    b = torch.tensor([[1.0, -2.0, 0.5], [4.0, 1.0, -3.0]], dtype=F64)
    torch.testing.assert_close(conjugate_gradient(diagonal(d), b, 2), b / d, rtol=0, atol=1e-12)


def test_a_row_that_meets_rtol_stops_while_the_others_go_on():
    """rtol = 0.1. Row 0 (eigenvalues 1, 1.1) is within it after one step, which is x₁ = (bᵀb / bᵀAb) b
    (relative residual 1/21); row 1 (1, 10) is not (9/11) and is solved exactly by its second step."""
    d = torch.tensor([[1.0, 1.1], [1.0, 10.0]], dtype=F64)
    b = torch.full((2, 2), 10.0, dtype=F64)
    x = conjugate_gradient(diagonal(d), b, 50, rtol=0.1)
    torch.testing.assert_close(x[0], 200 / 210 * b[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(x[1], b[1] / d[1], rtol=0, atol=1e-12)


def test_b_outside_the_range_gives_the_least_norm_solution_zero():
    """A = diag(0, 1, 2), b = e₁ ⟂ range(A): the least-squares solution of least norm is A⁺b = 0 (no step
    divides by pᵀAp = 0); a consistent row next to it is solved as usual."""
    d = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]], dtype=F64)
    b = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]], dtype=F64)
    x = conjugate_gradient(diagonal(d), b, 10)
    torch.testing.assert_close(x, torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 2.0]], dtype=F64), rtol=0, atol=1e-12)


def test_least_squares_is_the_pseudo_inverse_also_when_y_leaves_the_range():
    """A rank-2 3×4 H (so H Hᵀ is singular) and a y with a part outside H's range: least_squares gives
    torch.linalg.pinv(H) y, the least-norm least-squares answer."""
    from types import SimpleNamespace

    from degradations.linalg import least_squares

    g = torch.Generator().manual_seed(3)
    matrix = torch.randn(3, 2, generator=g, dtype=F64) @ torch.randn(2, 4, generator=g, dtype=F64)
    op = SimpleNamespace(H=lambda x: x @ matrix.T, Ht=lambda y: y @ matrix)
    y = torch.tensor([[0.4, -1.0, 2.5], [1.0, 0.0, -0.3]], dtype=F64)
    torch.testing.assert_close(least_squares(op, y, 50), y @ torch.linalg.pinv(matrix).T, rtol=1e-9, atol=1e-9)
