"""Conjugate gradients for linear operators known only through their action (batched, matrix-free)."""
import torch


def conjugate_gradient(apply, b, iterations, rtol=None):
    """x with apply(x) = b, for `apply` symmetric positive semi-definite; each batch row is solved on its own.

    Starts from 0, so on a consistent singular system it returns the solution of least norm. Stops when
    every row's residual is below rtol·‖b‖ (default: 100 machine epsilons of b's dtype) or after
    `iterations` steps.
    """
    rtol = 100 * torch.finfo(b.dtype).eps if rtol is None else rtol
    def dot(u, v):
        return (u * v).reshape(u.shape[0], -1).sum(1)

    def per_row(scalars):
        return scalars.reshape(-1, *[1] * (b.ndim - 1))

    x, r = torch.zeros_like(b), b.clone()
    p, rr = r.clone(), dot(r, r)
    stop = rtol**2 * rr
    for _ in range(iterations):
        active = rr > stop
        if not active.any():
            break
        ap = apply(p)
        pap = dot(p, ap)
        alpha = torch.where(active & (pap > 0), rr / torch.where(pap > 0, pap, 1), 0)
        x = x + per_row(alpha) * p
        r = r - per_row(alpha) * ap
        rr_next = dot(r, r)
        beta = torch.where(active, rr_next / torch.where(rr > 0, rr, 1), 0)
        p = r + per_row(beta) * p
        rr = rr_next
    return x


def least_squares(op, y, iterations):
    """H⁺y for a linear operator known through op.H and op.Ht: conjugate gradients on the normal equations
    HᵀH x = Hᵀy, which are consistent for every y (H Hᵀ w = y is not when H Hᵀ is singular and y leaves H's
    range), so CG from 0 gives the least-squares solution of least norm."""
    return conjugate_gradient(lambda x: op.Ht(op.H(x)), op.Ht(y), iterations)
