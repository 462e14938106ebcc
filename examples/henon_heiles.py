"""Henon-Heiles system `H = (px^2 + py^2)/2 + (x^2 + y^2)/2 + x^2 y - y^3/3`.

The start `(x, y, px, py) = (0, 0.1, 0.49, 0)` has `H = 0.1247...`, below the escape
energy 1/6, so the motion stays bounded. `S` is the canonical skew matrix.
"""

import dgcodegen as dg

x = dg.state("x")
y = dg.state("y")
px = dg.state("px")
py = dg.state("py")

problem = dg.System(
    energy=(px**2 + py**2) / 2 + (x**2 + y**2) / 2 + x**2 * y - y**3 / 3,
    structure=[
        [0, 0, 1, 0],
        [0, 0, 0, 1],
        [-1, 0, 0, 0],
        [0, -1, 0, 0],
    ],
    initial={"x": 0.0, "y": 0.1, "px": 0.49, "py": 0.0},
    step=1e-2,
)
