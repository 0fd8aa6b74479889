"""The inner loop of OpenCV's DualTVL1 fused into one pass over the image per iteration (numba).

OpenCV runs each primal-dual iteration as seven passes over memory (estimateV, two divergences,
estimateU with its error sum, two forward gradients, estimateDualVariables), writing eight full
temporary images. Here one sweep down the rows does all of it: row i's thresholding, divergence and
primal update (which read the dual variables of rows i and i - 1 as they were before this
iteration), then the dual update of row i - 1 (which needs the new u of rows i - 1 and i). The dual
update trails the primal one by a row, so every value is read before it is overwritten, as in
OpenCV's separate passes, and no temporary image is written: per pixel the sweep reads the four
fixed planes and the state and writes the state back (40 bytes per pixel).

The arithmetic is OpenCV's, operand for operand, with three float-rounding differences: the
error sum runs in another order (vectorised, float32 per row, float64 per image, where OpenCV
sums pixel after pixel in float32), the two divisions of the dual step by one norm are one
reciprocal and two products, and |grad u| is a float sqrt where OpenCV takes a double hypot.
No fused multiply-adds (OpenCV's build has none here; they measured no faster).

Each loop is written so that LLVM vectorises it: no data-dependent branches (the thresholding
cases are selects), float division without Python's zero check (error_model="numpy"), and one
kernel per variable count (a runtime `if gamma` in the loop body stops vectorisation, measured
6x slower), so gamma = 0, the default, never pays for the illumination term.
"""
from __future__ import annotations

import numba
import numpy as np

# Fast-math without the no-NaN / no-Inf promises: vectorised reductions (reassoc), reciprocals
# (arcp); every value stays finite by construction anyway.
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
def _primal_row(i, gx, gy, grad, rho_c, u1, u2, p11, p12, p21, p22, l_t, theta):
    """estimateV, divergence (backward differences, p = 0 before the first row / column) and
    estimateU of row i, in place; returns the row's squared change of u."""
    zero = np.float32(0.0)
    err = zero
    for j in range(u1.shape[1]):
        x1 = u1[i, j]
        x2 = u2[i, j]
        ix = gx[i, j]
        iy = gy[i, j]
        fi = _threshold(rho_c[i, j] + (ix * x1 + iy * x2), grad[i, j], l_t)
        a11 = p11[i, j - 1] if j > 0 else zero
        a21 = p21[i, j - 1] if j > 0 else zero
        b12 = p12[i - 1, j] if i > 0 else zero
        b22 = p22[i - 1, j] if i > 0 else zero
        n1 = (x1 + fi * ix) + theta * ((p11[i, j] - a11) + (p12[i, j] - b12))
        n2 = (x2 + fi * iy) + theta * ((p21[i, j] - a21) + (p22[i, j] - b22))
        u1[i, j] = n1
        u2[i, j] = n2
        err += (n1 - x1) * (n1 - x1) + (n2 - x2) * (n2 - x2)
    return err


@numba.njit(inline="always", **_JIT)
def _primal_row_gamma(i, gx, gy, grad, rho_c, u1, u2, u3, p11, p12, p21, p22, p31, p32, l_t, theta, gamma):
    """_primal_row with gamma's third variable u3 (illumination changes), as OpenCV."""
    zero = np.float32(0.0)
    err = zero
    for j in range(u1.shape[1]):
        x1 = u1[i, j]
        x2 = u2[i, j]
        x3 = u3[i, j]
        ix = gx[i, j]
        iy = gy[i, j]
        fi = _threshold(rho_c[i, j] + (ix * x1 + iy * x2) + gamma * x3, grad[i, j], l_t)
        a11 = p11[i, j - 1] if j > 0 else zero
        a21 = p21[i, j - 1] if j > 0 else zero
        a31 = p31[i, j - 1] if j > 0 else zero
        b12 = p12[i - 1, j] if i > 0 else zero
        b22 = p22[i - 1, j] if i > 0 else zero
        b32 = p32[i - 1, j] if i > 0 else zero
        n1 = (x1 + fi * ix) + theta * ((p11[i, j] - a11) + (p12[i, j] - b12))
        n2 = (x2 + fi * iy) + theta * ((p21[i, j] - a21) + (p22[i, j] - b22))
        n3 = (x3 + fi * gamma) + theta * ((p31[i, j] - a31) + (p32[i, j] - b32))
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
        for i in range(h):
            total += _primal_row(i, gx, gy, grad, rho_c, u1, u2, p11, p12, p21, p22, l_t, theta)
            if i > 0:  # the dual update trails by one row
                _dual_row(u1[i - 1], u1[i], p11[i - 1], p12[i - 1], taut)
                _dual_row(u2[i - 1], u2[i], p21[i - 1], p22[i - 1], taut)
        # The last row: its "next row" is itself (zero y difference).
        _dual_row(u1[h - 1], u1[h - 1], p11[h - 1], p12[h - 1], taut)
        _dual_row(u2[h - 1], u2[h - 1], p21[h - 1], p22[h - 1], taut)
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
        for i in range(h):
            total += _primal_row_gamma(i, gx, gy, grad, rho_c, u1, u2, u3, p11, p12, p21, p22, p31, p32,
                                       l_t, theta, gamma)
            if i > 0:
                _dual_row(u1[i - 1], u1[i], p11[i - 1], p12[i - 1], taut)
                _dual_row(u2[i - 1], u2[i], p21[i - 1], p22[i - 1], taut)
                _dual_row(u3[i - 1], u3[i], p31[i - 1], p32[i - 1], taut)
        _dual_row(u1[h - 1], u1[h - 1], p11[h - 1], p12[h - 1], taut)
        _dual_row(u2[h - 1], u2[h - 1], p21[h - 1], p22[h - 1], taut)
        _dual_row(u3[h - 1], u3[h - 1], p31[h - 1], p32[h - 1], taut)
        error = total
        if error <= eps:
            return n + 1, error
    return iterations, error
