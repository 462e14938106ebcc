"""Kepler problem `H = |p|^2/2 - 1/|q|` on an orbit of eccentricity 0.6.

From `q = (0.4, 0)` and `p = (0, 2)`: `H = -1/2`, angular momentum `q_0 p_1 - q_1 p_0 =
0.8`, semi-major axis 1 and period `2 pi`. `S` is the canonical skew matrix. dgcodegen has
no exact mean value of `grad (1/|q|)`, so the `mean-value` step uses Gauss-Legendre
quadrature and conserves `H` only up to the quadrature error. The other discrete
gradients conserve `H` to round-off.
"""

import sympy as sp

import dgcodegen as dg

q = dg.state("q", 2)
p = dg.state("p", 2)

problem = dg.System(
    energy=p.dot(p) / 2 - 1 / sp.sqrt(q.dot(q)),
    structure=[
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [-1, 0, 0, 0],
        [0, -1, 0, 0],
    ],
    initial={"q": [0.4, 0.0], "p": [0.0, 2.0]},
    step=2e-3,
)
