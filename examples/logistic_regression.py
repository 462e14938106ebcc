"""L2-regularised logistic regression on the breast cancer data set.

The loss is `sum_i softplus(-y_i (w . x_i + b)) + |w|^2 / 2`, the objective that
scikit-learn's `LogisticRegression(C=1)` minimises (its intercept is not penalised).
Features are standardised to zero mean and unit variance; labels are +1 and -1.
"""

import numpy as np
from sklearn.datasets import load_breast_cancer

import dgcodegen as dg

features, labels = load_breast_cancer(return_X_y=True)
features = (features - features.mean(axis=0)) / features.std(axis=0)

w = dg.parameter("w", 30)
b = dg.parameter("b")
x = dg.data("x", 30)
y = dg.data("y")

problem = dg.Loss(
    per_sample=dg.softplus(-y * (w.dot(x) + b)),
    reduction="sum",
    regularizer=w.dot(w) / 2,
    data={"x": features, "y": np.where(labels == 1, 1.0, -1.0)},
)
