"""Damped oscillator `q' = p`, `p' = -q - c p` with `H = p^2/2 + q^2/2`.

`S = [[0, 1], [-1, -c]]` is negative semidefinite for `c >= 0`, so every step lowers `H`:
`H(y) - H(x) = h DG^T S DG = -c h DG_p^2`.
"""

import dgcodegen as dg

q = dg.state("q")
p = dg.state("p")

DAMPING = 0.1

problem = dg.System(
    energy=p**2 / 2 + q**2 / 2,
    structure=[[0, 1], [-1, -DAMPING]],
    initial={"q": 1.0, "p": 0.0},
    step=1e-2,
)
