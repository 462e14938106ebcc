"""Duffing oscillator `H = p^2/2 + q^2/2 + q^4/4`, released at rest from `q = q0`.

The exact solution is `q = q0 cn(w t, m)` with `w^2 = 1 + q0^2` and
`m = q0^2 / (2 (1 + q0^2))`, a Jacobi elliptic function.
"""

import dgcodegen as dg

q = dg.state("q")
p = dg.state("p")

problem = dg.System(
    energy=p**2 / 2 + q**2 / 2 + q**4 / 4,
    structure=[[0, 1], [-1, 0]],
    initial={"q": 1.0, "p": 0.0},
    step=1e-3,
)
