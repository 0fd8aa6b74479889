"""The inner loop of OpenCV's DualTVL1 fused into one pass over the image per iteration (numba).

OpenCV runs each primal-dual iteration as six passes over memory (estimateV, two divergences,
estimateU with its error sum, two forward gradients, estimateDualVariables), each writing a full
temporary image. Here one sweep down the rows does all of it: row i's thresholding, divergence and
primal update (which read the dual variables of rows i and i - 1 as they were before this
iteration), then the dual update of row i - 1 (which needs the new u of rows i - 1 and i). The dual
update trails the primal one by a row, so every value is read before it is overwritten, as in
OpenCV's separate passes, and no temporary image is written: per pixel the sweep reads the four
fixed planes and the state and writes the state back (40 bytes, cache-resident at 340x256).

The arithmetic is OpenCV's, operand for operand; only the order of the float sums may differ (the
compiler vectorises the error sum and contracts a * b + c into fused multiply-adds), and the
error is summed in float64 per image (float32 per row) where OpenCV sums in float32.

Each loop is written so that LLVM vectorises it: no data-dependent branches (the thresholding
cases are selects), float division without Python's zero check (error_model="numpy"), and one
kernel per variable count (a runtime `if gamma` in the loop body stops vectorisation, measured
6x slower), so gamma = 0, the default, never pays for the illumination term.
"""
from __future__ import annotations

import numba
import numpy as np

# Fast-math without the no-NaN / no-Inf promises: vectorised reductions (reassoc), fused
# multiply-adds (contract), reciprocals; every value stays finite by construction anyway.
_JIT = dict(cache=True, nogil=True, error_model="numpy", fastmath={"nsz", "arcp", "afn", "reassoc"})
_FLT_EPSILON = np.float32(np.finfo(np.float32).eps)
_TINY = np.float32(1e-30)


@numba.njit(inline="always", **_JIT)
def _threshold(rho, g, l_t):
    """OpenCV's estimateV step factor: v = u + fi * grad I1w, with its three cases (and no step
    where |grad I1w|^2 <= FLT_EPSILON), as selects."""
    fi = -rho / max(g, _TINY)
    fi = np.float32(0.0) if g <= _FLT_EPSILON else fi
    lg = l_t * g
    fi = -l_t if rho > lg else fi
    return l_t if rho < -lg else fi


@numba.njit(inline="always", **_JIT)
def _divergence(q1, q2, i, j):
    """OpenCV's divergence at (i, j): backward differences, p = 0 before the first row / column."""
    zero = np.float32(0.0)
    return (q1[i, j] - (q1[i, j - 1] if j > 0 else zero)) + (q2[i, j] - (q2[i - 1, j] if i > 0 else zero))


@numba.njit(inline="always", **_JIT)
def _primal_row(i, gx, gy, grad, rho_c, u1, u2, p11, p12, p21, p22, l_t, theta):
    """estimateV, divergence and estimateU of row i, in place; returns the row's squared change."""
    err = np.float32(0.0)
    for j in range(u1.shape[1]):
        x1, x2, ix, iy = u1[i, j], u2[i, j], gx[i, j], gy[i, j]
        fi = _threshold(rho_c[i, j] + (ix * x1 + iy * x2), grad[i, j], l_t)
        n1 = (x1 + fi * ix) + theta * _divergence(p11, p12, i, j)
        n2 = (x2 + fi * iy) + theta * _divergence(p21, p22, i, j)
        u1[i, j] = n1
        u2[i, j] = n2
        err += (n1 - x1) * (n1 - x1) + (n2 - x2) * (n2 - x2)
    return err


@numba.njit(inline="always", **_JIT)
def _primal_row_gamma(i, gx, gy, grad, rho_c, u1, u2, u3, p11, p12, p21, p22, p31, p32, l_t, theta, gamma):
    """_primal_row with gamma's third variable u3 (illumination changes), as OpenCV."""
    err = np.float32(0.0)
    for j in range(u1.shape[1]):
        x1, x2, x3, ix, iy = u1[i, j], u2[i, j], u3[i, j], gx[i, j], gy[i, j]
        fi = _threshold(rho_c[i, j] + (ix * x1 + iy * x2) + gamma * x3, grad[i, j], l_t)
        n1 = (x1 + fi * ix) + theta * _divergence(p11, p12, i, j)
        n2 = (x2 + fi * iy) + theta * _divergence(p21, p22, i, j)
        n3 = (x3 + fi * gamma) + theta * _divergence(p31, p32, i, j)
        u1[i, j] = n1
        u2[i, j] = n2
        u3[i, j] = n3
        err += (n1 - x1) * (n1 - x1) + (n2 - x2) * (n2 - x2) + (n3 - x3) * (n3 - x3)
    return err


@numba.njit(inline="always", **_JIT)
def _dual_row(c, below, q1, q2, taut):
    """forwardGradient and estimateDualVariables of one variable along one row: `c` its new values,
    `below` those of the next row (`c` itself in the last row, where the y difference is 0), and
    q1, q2 its dual variables. OpenCV's hypot in double is a float sqrt here."""
    w = c.shape[0]
    one = np.float32(1.0)
    for j in range(w - 1):
        dx = c[j + 1] - c[j]
        dy = below[j] - c[j]
        ng = one + taut * np.sqrt(dx * dx + dy * dy)
        q1[j] = (q1[j] + taut * dx) / ng
        q2[j] = (q2[j] + taut * dy) / ng
    dy = below[w - 1] - c[w - 1]  # the x difference is 0 in the last column
    ng = one + taut * np.sqrt(dy * dy)
    q1[w - 1] = q1[w - 1] / ng
    q2[w - 1] = (q2[w - 1] + taut * dy) / ng


@numba.njit(**_JIT)
def inner_iterations(gx, gy, grad, rho_c, u1, u2, p11, p12, p21, p22, l_t, theta, taut, eps, iterations):
    """Up to `iterations` primal-dual steps in place (all arrays float32 [H, W], C-contiguous),
    stopping after the first whose summed squared update of u is <= eps (OpenCV's test).
    Returns (steps done, that last sum)."""
    h = u1.shape[0]
    error = np.inf
    for n in range(iterations):
        total = 0.0
        for i in range(h + 1):
            if i < h:
                total += _primal_row(i, gx, gy, grad, rho_c, u1, u2, p11, p12, p21, p22, l_t, theta)
            if i > 0:  # the dual update trails by one row
                r, b = i - 1, min(i, h - 1)
                _dual_row(u1[r], u1[b], p11[r], p12[r], taut)
                _dual_row(u2[r], u2[b], p21[r], p22[r], taut)
        error = total
        if error <= eps:
            return n + 1, error
    return iterations, error


@numba.njit(**_JIT)
def inner_iterations_gamma(gx, gy, grad, rho_c, u1, u2, u3, p11, p12, p21, p22, p31, p32, l_t, theta, taut,
                           gamma, eps, iterations):
    """inner_iterations with gamma > 0: the third variable u3 and its dual variables p31, p32."""
    h = u1.shape[0]
    error = np.inf
    for n in range(iterations):
        total = 0.0
        for i in range(h + 1):
            if i < h:
                total += _primal_row_gamma(i, gx, gy, grad, rho_c, u1, u2, u3, p11, p12, p21, p22, p31, p32,
                                           l_t, theta, gamma)
            if i > 0:
                r, b = i - 1, min(i, h - 1)
                _dual_row(u1[r], u1[b], p11[r], p12[r], taut)
                _dual_row(u2[r], u2[b], p21[r], p22[r], taut)
                _dual_row(u3[r], u3[b], p31[r], p32[r], taut)
        error = total
        if error <= eps:
            return n + 1, error
    return iterations, error
