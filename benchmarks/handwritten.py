"""Hand-written kernels of L2-regularised logistic regression, the references of `kernels`.

The loss is `V(w, b) = sum_i softplus(-y_i (w . x_i + b)) + |w|^2 / 2`, the loss of
`examples/logistic_regression.py`, with parameters `theta = (w, b)`. With
`t_i = -y_i (w . x_i + b)` every per-sample term is `softplus(t_i)`, so the gradient is
`sum_i sigmoid(t_i) dt_i/dtheta` and the Hessian `sum_i sigmoid'(t_i) a_i a_i^T` with
`a_i = -y_i (x_i, 1)` and `y_i = +-1`.

`loss_and_gradient` is what a Numba user would write: one parallel pass over the samples
that reads each row once. The NumPy functions are what a NumPy user would write, with BLAS
for the matrix products.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

CHUNK = 256
"""Rows per parallel work item, as in the generated kernels."""


@numba.njit(parallel=True, cache=True)
def loss_and_gradient(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Return `V(theta)` and its gradient from one parallel pass over the rows of `x`.

    Each chunk of rows adds into its own row of a partial-sum array, and the rows are added
    in order afterwards, so no two threads write the same entry.
    """
    n, d = x.shape
    n_chunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros((n_chunks, d + 2))
    for chunk in prange(n_chunks):
        acc = partial[chunk]
        for i in range(chunk * CHUNK, min(n, (chunk + 1) * CHUNK)):
            z = theta[d]
            for j in range(d):
                z += x[i, j] * theta[j]
            t = -y[i] * z
            # softplus(t) and sigmoid(t) share exp(-|t|), which stays in (0, 1].
            e = math.exp(-abs(t))
            acc[d + 1] += max(t, 0.0) + math.log1p(e)
            s = -y[i] * (1.0 / (1.0 + e) if t >= 0.0 else e / (1.0 + e))
            for j in range(d):
                acc[j] += s * x[i, j]
            acc[d] += s
    # Plain loops: with parallel=True, Numba turns an array expression such as
    # `total += partial[chunk]` into a parallel region of its own, one per chunk, and with
    # sleeping OpenMP threads those thousands of regions took 90 % of the time.
    gradient = np.zeros(d + 1)
    loss = 0.0
    for chunk in range(n_chunks):
        for j in range(d + 1):
            gradient[j] += partial[chunk, j]
        loss += partial[chunk, d + 1]
    for j in range(d):
        gradient[j] += theta[j]
        loss += 0.5 * theta[j] * theta[j]
    return loss, gradient


def _margins(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return `t_i = -y_i (w . x_i + b)`."""
    return -y * (x @ theta[:-1] + theta[-1])


def _sigmoid_array(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _transpose_times(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return `sum_i weights_i a_i` with `a_i = -y_i (x_i, 1)`."""
    signed = -y * weights
    return np.append(x.T @ signed, signed.sum())


def _gram(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Return `sum_i weights_i a_i a_i^T`. The signs of `a_i` cancel because `y_i^2 = 1`."""
    scaled = x * weights[:, None]
    d = x.shape[1]
    gram = np.empty((d + 1, d + 1))
    gram[:d, :d] = x.T @ scaled
    gram[:d, d] = gram[d, :d] = scaled.sum(axis=0)
    gram[d, d] = weights.sum()
    return gram


def numpy_loss_and_gradient(
    theta: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    """Return `V(theta)` and its gradient with NumPy."""
    t = _margins(theta, x, y)
    w = theta[:-1]
    loss = float(np.logaddexp(0.0, t).sum() + 0.5 * w @ w)
    gradient = _transpose_times(x, y, _sigmoid_array(t))
    gradient[:-1] += w
    return loss, gradient


def numpy_hessian(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Return the Hessian of `V` with NumPy."""
    s = _sigmoid_array(_margins(theta, x, y))
    hessian = _gram(x, s * (1.0 - s))
    hessian[np.arange(x.shape[1]), np.arange(x.shape[1])] += 1.0
    return hessian


def _divided_difference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return `(softplus(b) - softplus(a)) / (b - a)` and its derivative in `b`.

    Below `|b - a| = 1e-3` the quotient uses the midpoint series
    `sigmoid(m) + h^2 sigmoid''(m) / 24`, below `1e-5` the derivative uses
    `sigmoid'(m) / 2 + h sigmoid''(m) / 12`. Both truncation errors are under 1e-10.
    """
    h = b - a
    s = _sigmoid_array(0.5 * (a + b))
    first = s * (1.0 - s)
    second = first * (1.0 - 2.0 * s)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = (np.logaddexp(0.0, b) - np.logaddexp(0.0, a)) / h
        quotient = np.where(np.abs(h) < 1e-3, s + h * h * second / 24.0, direct)
        slope = np.where(
            np.abs(h) < 1e-5, 0.5 * first + h * second / 12.0, (_sigmoid_array(b) - quotient) / h
        )
    return quotient, slope


def numpy_mean_value(
    theta_x: np.ndarray, theta_y: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Return the mean-value discrete gradient `integral_0^1 grad V(x + s (y - x)) ds`."""
    quotient, _ = _divided_difference(_margins(theta_x, x, y), _margins(theta_y, x, y))
    result = _transpose_times(x, y, quotient)
    result[:-1] += 0.5 * (theta_x[:-1] + theta_y[:-1])
    return result


def numpy_mean_value_jacobian(
    theta_x: np.ndarray, theta_y: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Return the Jacobian in `theta_y` of `numpy_mean_value`."""
    _, slope = _divided_difference(_margins(theta_x, x, y), _margins(theta_y, x, y))
    jacobian = _gram(x, slope)
    jacobian[np.arange(x.shape[1]), np.arange(x.shape[1])] += 0.5
    return jacobian


def numpy_gonzalez(
    theta_x: np.ndarray, theta_y: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Return Gonzalez's `grad V(m) + (V(y) - V(x) - grad V(m) . d) / |d|^2 d`.

    Only the direct form: the caller keeps `|d|` well above the series threshold.
    """
    d = theta_y - theta_x
    loss_x, _ = numpy_loss_and_gradient(theta_x, x, y)
    loss_y, _ = numpy_loss_and_gradient(theta_y, x, y)
    _, gradient_m = numpy_loss_and_gradient(0.5 * (theta_x + theta_y), x, y)
    return gradient_m + (loss_y - loss_x - gradient_m @ d) / (d @ d) * d


def numpy_gonzalez_jacobian(
    theta_x: np.ndarray, theta_y: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Return the Jacobian in `theta_y` of `numpy_gonzalez`."""
    d = theta_y - theta_x
    squared = d @ d
    middle = 0.5 * (theta_x + theta_y)
    loss_x, _ = numpy_loss_and_gradient(theta_x, x, y)
    loss_y, gradient_y = numpy_loss_and_gradient(theta_y, x, y)
    _, gradient_m = numpy_loss_and_gradient(middle, x, y)
    hessian_m = numpy_hessian(middle, x, y)
    remainder = loss_y - loss_x - gradient_m @ d
    gradient_correction = (gradient_y - gradient_m - 0.5 * hessian_m @ d) / squared
    gradient_correction -= 2.0 * remainder / squared**2 * d
    identity = np.eye(d.size)
    return 0.5 * hessian_m + remainder / squared * identity + np.outer(d, gradient_correction)
