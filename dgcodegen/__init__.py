"""dgcodegen: exact discrete gradients of symbolic losses, compiled into Numba solvers.

Stages, each owned by one module, with data flowing one way:

1. declare (`dsl`): parameters, data columns and the loss;
2. derive (`derive`): gradient, discrete gradients and their Jacobians;
3. lower (`lower`): common subexpressions and reductions into kernel descriptions;
4. emit (`emit`, `printer`): Jinja templates render Numba modules, written atomically;
5. run (`stepper`, `runtime`): the implicit discrete gradient stepper.
"""

import logging
import os

# Numba's OpenMP threads spinning while they wait slowed the kernels 20 to 30 times when
# another process kept a core busy; see templates/numba_cache.py.jinja.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .dsl import DiscreteGradient, Loss, data, parameter
from .errors import DgcodegenError, SpecError
from .functions import sigmoid, softplus
from .network import Dense, Network
from .system import System, state

__version__ = "0.1.0"

logging.getLogger("dgcodegen").addHandler(logging.NullHandler())

__all__ = [
    "Dense",
    "DgcodegenError",
    "DiscreteGradient",
    "Loss",
    "Network",
    "SpecError",
    "System",
    "data",
    "parameter",
    "sigmoid",
    "softplus",
    "state",
]
