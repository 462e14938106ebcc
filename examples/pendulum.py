"""Pendulum `H = p^2/2 - cos q`, released at rest from `q = pi/2`.

The period is `4 K(1/2) = 7.4162987092...`, with `K(m)` the complete elliptic integral of
the first kind in the parameter `m = sin^2(q0 / 2)`. `S` is the canonical skew matrix, so
every discrete gradient conserves `H`.
"""

import sympy as sp

import dgcodegen as dg

q = dg.state("q")
p = dg.state("p")

problem = dg.System(
    energy=p**2 / 2 - sp.cos(q),
    structure=[[0, 1], [-1, 0]],
    initial={"q": sp.pi / 2, "p": 0},
    step=1e-3,
)
