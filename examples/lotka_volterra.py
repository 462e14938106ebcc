"""Lotka-Volterra system `u' = u (v - 2)`, `v' = v (1 - u)` in skew-gradient form.

With `S = [[0, -u v], [u v, 0]]` and `I = log u - u + 2 log v - v`, `S grad I` is the
vector field, so `I` is conserved. `S` depends on the state, and the step evaluates it at
the midpoint `(x + y) / 2`.
"""

import sympy as sp

import dgcodegen as dg

u = dg.state("u")
v = dg.state("v")

problem = dg.System(
    energy=sp.log(u) - u + 2 * sp.log(v) - v,
    structure=[[0, -u * v], [u * v, 0]],
    initial={"u": 1.0, "v": 1.0},
    step=1e-2,
)
