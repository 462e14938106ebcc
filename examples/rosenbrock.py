"""Rosenbrock's function, minimised from the classical start (-1.2, 1) to (1, 1)."""

import dgcodegen as dg

x = dg.parameter("x", 2)

problem = dg.Loss(
    objective=(1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2,
    initial={"x": [-1.2, 1.0]},
)
