"""A 64-16-10 tanh network on scikit-learn's digits: 1,210 parameters, softmax cross-entropy.

The spec trains on 75% of the 1,797 images (pixels scaled to [0, 1]) with an L2 penalty of
1e-3 / 2 * |theta|^2 on all parameters, and keeps the other 25% as `TEST` for accuracy.
"""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import dgcodegen as dg

images, digits = load_digits(return_X_y=True)
train_x, test_x, train_y, test_y = train_test_split(
    images / 16.0, digits.astype(float), test_size=0.25, random_state=0, stratify=digits
)
TEST = {"x": test_x, "label": test_y}

problem = dg.Network(
    layers=[dg.Dense(64, 16, "tanh"), dg.Dense(16, 10)],
    loss="softmax_cross_entropy",
    weight_decay=1e-3,
    reduction="mean",
    data={"x": train_x, "label": train_y},
    initial="glorot",
    seed=0,
)
