"""Benchmarks of dgcodegen against the tools a user would pick instead.

`python -m benchmarks` runs three sections and writes `BENCHMARKS.md` with tables and
plots:

- `kernels`: generated loss, gradient, discrete gradient and Jacobian kernels against a
  hand-written Numba kernel, JAX, NumPy and `sympy.lambdify`, with GB/s next to the
  memory bandwidth measured in the same run;
- `optimisers`: time and steps to a relative loss gap of 1e-10 for every discrete
  gradient against gradient descent, Nesterov, Adam, L-BFGS-B and Newton's method;
- `sweep`: final loss after a fixed number of steps against the step size, for the
  discrete gradient method and gradient descent.

A `benchmarks.kepler` module, when present, adds a Kepler section. Every speed is a
ratio against a reference timed in the same run, with the minimum over repeats, because
the machines these run on are shared and their timings noisy.
"""
