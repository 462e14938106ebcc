"""The 64-16-10 tanh digits network of `mlp_digits.py`, written as a SymPy loss.

Same data split, loss, weight decay (1e-3 / 2 * |theta|^2), mean reduction and Glorot start
as `examples/mlp_digits.py`, with the same parameter order (W1 row-major, b1, W2, b2), so the
two specs give the same loss at the same theta. With 1,210 parameters, `dgcodegen solve`
takes the reverse-mode kernels and Newton-Krylov instead of dense symbolic kernels.

The label is a one-hot data column `y`, and the softmax cross-entropy is the log-sum-exp
with the maximum logit subtracted, `m + log(sum_k exp(z_k - m)) - y . z`, so no exponential
overflows. `Max` is built with `evaluate=False`, because SymPy 1.14 spent 61 s (on a shared
2-core machine) comparing the ten logit expressions to evaluate it.
"""

import math

import numpy as np
import sympy as sp
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import dgcodegen as dg

INPUTS, HIDDEN, CLASSES = 64, 16, 10
WEIGHT_DECAY = 1e-3

images, digits = load_digits(return_X_y=True)
train_x, test_x, train_y, test_y = train_test_split(
    images / 16.0, digits.astype(float), test_size=0.25, random_state=0, stratify=digits
)
TEST = {"x": test_x, "y": np.eye(CLASSES)[test_y.astype(int)]}

W1 = dg.parameter("W1", (HIDDEN, INPUTS))
b1 = dg.parameter("b1", HIDDEN)
W2 = dg.parameter("W2", (CLASSES, HIDDEN))
b2 = dg.parameter("b2", CLASSES)
x = dg.data("x", INPUTS)
y = dg.data("y", CLASSES)

hidden = (W1 * x + b1).applyfunc(sp.tanh)
logits = W2 * hidden + b2
largest = sp.Max(*logits, evaluate=False)
log_sum_exp = largest + sp.log(sp.Add(*[sp.exp(z - largest) for z in logits]))
cross_entropy = log_sum_exp - sp.Add(*[y[k] * logits[k] for k in range(CLASSES)])

weights = [*W1, *b1, *W2, *b2]
penalty = WEIGHT_DECAY / 2 * sp.Add(*[w**2 for w in weights])


def glorot_start(seed: int = 0) -> dict[str, np.ndarray]:
    """Return the uniform Glorot draw of `dg.Network(initial="glorot", seed=seed)`."""
    generator = np.random.default_rng(seed)
    start = {}
    for index, (inputs, outputs) in enumerate([(INPUTS, HIDDEN), (HIDDEN, CLASSES)], start=1):
        limit = math.sqrt(6.0 / (inputs + outputs))
        start[f"W{index}"] = generator.uniform(-limit, limit, size=(outputs, inputs))
        start[f"b{index}"] = np.zeros(outputs)
    return start


problem = dg.Loss(
    per_sample=cross_entropy,
    reduction="mean",
    regularizer=penalty,
    data={"x": train_x, "y": np.eye(CLASSES)[train_y.astype(int)]},
    initial=glorot_start(),
)
