"""Build, load and bind the generated kernels of a problem.

`compile_problem` runs the whole pipeline (derive, lower, render, write, import,
compile) and returns a `CompiledProblem` whose methods take flat float64 parameter
vectors, with the data bound once.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import keyword
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from . import __version__
from .dsl import Loss
from .emit import (
    GENERATED_LINE,
    RUNTIME_MODULES,
    _check_syntax,
    _runtime_copies,
    environment,
    render,
    render_network,
    write_package,
)
from .errors import InternalError, SpecError
from .layout import Layout
from .lower import lower
from .matrix_free import MatrixFreeKernels
from .network import Network
from .progress import progress
from .training import METHODS, BoundKernels

log = logging.getLogger("dgcodegen")

MATRIX_FREE_MAIN_TEMPLATE = "matrix_free_main.py.jinja"

MATRIX_FREE_RUNTIME_MODULES = (
    *RUNTIME_MODULES,
    "linear",
    "matrix_free",
    "krylov",
    "network_cli",
)
"""Modules of dgcodegen that network and reverse-mode packages get a copy of, with a header.

Each imports at module level only NumPy, the standard library and modules earlier in this
list, so the package's `__main__` runs where neither SymPy nor dgcodegen is installed.
"""


def cache_directory() -> Path:
    """Folder for generated kernels: `$DGCODEGEN_CACHE`, else the user cache folder."""
    configured = os.environ.get("DGCODEGEN_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dgcodegen"


def render_files(
    problem: Any, show_progress: bool = False, reverse: bool | None = None
) -> dict[str, str]:
    """Render the generated package of a `Loss`, `System` or `Network`, by file name.

    With `reverse`, a `Loss` gets the reverse-mode kernels of `reverse_emit.py` in place of
    the dense kernels; None picks them above DENSE_NEWTON_LIMIT parameters, as `solve` and
    `generate` do. Packages of a `Loss` or a `Network` get a `__main__` that trains the
    problem with only NumPy and Numba installed.
    """
    from .integrate import render_system
    from .reverse_cli import pick_kernels
    from .system import System

    if isinstance(problem, Network):
        classes = problem.layers[-1].outputs if problem.loss == "softmax_cross_entropy" else None
        return _add_matrix_free_main(render_network(problem), problem.layout, "network", classes)
    if isinstance(problem, System):
        return render_system(problem)
    if reverse is None:
        reverse = pick_kernels(problem, "auto") == "reverse"
    if reverse:
        from .reverse_emit import render_matrix_free

        return _add_matrix_free_main(render_matrix_free(problem), problem.layout, "loss", None)
    module = lower(problem, show_progress=show_progress)
    return render(module, problem.fingerprint(), problem.layout)


def _add_matrix_free_main(
    files: dict[str, str], layout: Layout, kind: str, classes: int | None
) -> dict[str, str]:
    """Add a `__main__` and the runtime modules it needs to a network or reverse-mode package.

    Args:
        files: the rendered kernels, layout and `__init__` of the package, by file name.
        layout: names, shapes and starting point of the problem.
        kind: "network" or "loss" (a loss with reverse-mode kernels).
        classes: outputs of a softmax cross-entropy network, whose labels `__main__` checks;
            None for other problems.
    """
    spec_hash = _spec_hash(files["__init__.py"])
    header = {
        "generated_line": GENERATED_LINE,
        "version": __version__,
        "spec_hash": spec_hash,
        "template": MATRIX_FREE_MAIN_TEMPLATE,
    }
    template = environment().get_template(MATRIX_FREE_MAIN_TEMPLATE)
    main = template.render(
        name=layout.name, kind=kind, has_data=layout.has_data, classes=classes, header=header
    )
    files = {**files, "__main__.py": main}
    files.update(_runtime_copies(MATRIX_FREE_RUNTIME_MODULES, spec_hash))
    _check_syntax(files)
    return files


def _spec_hash(init_source: str) -> str:
    """Return the spec hash that the header of a rendered `__init__.py` names."""
    header = init_source.splitlines()[1]
    _, marker, digest = header.rpartition(" spec sha256 ")
    if not marker or not digest:
        raise InternalError(f"the rendered __init__.py has no spec hash in its header: {header!r}")
    return digest


def generate(
    problem: Any, out: Path | None = None, show_progress: bool = False, reverse: bool = False
) -> Path:
    """Derive and render the kernels of `problem` into `out` and return that folder.

    Without `out`, the kernels go to a folder of the cache named after the problem and
    a hash of the generated source, so a changed spec never reuses stale kernels. `reverse`
    selects the reverse-mode kernels of a `Loss`.
    """
    started = time.perf_counter()
    files = render_files(problem, show_progress, reverse)
    if out is None:
        digest = hashlib.sha256(files["kernels.py"].encode()).hexdigest()[:16]
        out = cache_directory() / f"{problem.name}-{digest}"
    write_package(files, Path(out))
    log.info("generated kernels of %r in %.2f s", problem.name, time.perf_counter() - started)
    return Path(out)


def load_kernels(directory: Path) -> ModuleType:
    """Import the generated `kernels.py` in `directory` as a module.

    A package folder whose name is an identifier is imported as that package, so the kernels
    get the module name `<folder>.kernels` that `python -m <folder>` gives them too. Numba's
    cache records the module name of every compiled function and imports it when it loads a
    cached entry, so both ways of running must use the same name. Other folders, such as the
    hash-named ones of the kernel cache, get a name made from a hash of their path. A module
    whose source changed since it was imported is imported again.

    Raises:
        SpecError: when `directory` has no kernels, or another module of the folder's name
            is already imported.
    """
    directory = Path(directory).resolve()
    path = directory / "kernels.py"
    if not path.is_file():
        raise SpecError(f"no generated kernels at {path}; run `dgcodegen generate` first")
    source_hash = hashlib.sha256(path.read_bytes()).hexdigest()
    package = directory.name
    if is_package_name(package) and (directory / "__init__.py").is_file():
        name = f"{package}.kernels"
        _forget_stale(package, directory, name, source_hash)
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(
                package, directory / "__init__.py", submodule_search_locations=[str(directory)]
            )
            _execute(spec, package)
    else:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        name = f"dgcodegen_kernels_{digest}"
        loaded = sys.modules.get(name)
        if loaded is not None and getattr(loaded, "_dgcodegen_source_hash", None) != source_hash:
            del sys.modules[name]
        if name not in sys.modules:
            _execute(importlib.util.spec_from_file_location(name, path), name)
    module = sys.modules[name]
    module._dgcodegen_source_hash = source_hash
    return module


def is_package_name(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


def _forget_stale(package: str, directory: Path, name: str, source_hash: str) -> None:
    """Drop an imported `package` whose kernels changed; raise if it is another folder's."""
    loaded = sys.modules.get(package)
    if loaded is None:
        return
    paths = [str(Path(p).resolve()) for p in getattr(loaded, "__path__", [])]
    if paths != [str(directory)]:
        where = ", ".join(paths) or getattr(loaded, "__file__", None) or "a built-in module"
        raise SpecError(
            f"cannot load the kernels in {directory}: a module named {package!r} from {where} "
            "is already imported, and Numba's cache refers to kernels by package name; give "
            "the package folder a unique name"
        )
    kernels = sys.modules.get(name)
    if kernels is not None and getattr(kernels, "_dgcodegen_source_hash", None) == source_hash:
        return
    for key in [k for k in sys.modules if k == package or k.startswith(f"{package}.")]:
        del sys.modules[key]


def _execute(spec: importlib.machinery.ModuleSpec | None, name: str) -> None:
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for key in [k for k in sys.modules if k == name or k.startswith(f"{name}.")]:
            del sys.modules[key]
        raise


class CompiledProblem(BoundKernels):
    """Generated kernels of a declared loss with its data bound.

    Args:
        problem: the declared loss.
        kernels: the imported generated module.
        data: arrays by column name; the spec's default data when None.
    """

    def __init__(self, problem: Loss, kernels: ModuleType, data: dict[str, Any] | None) -> None:
        if data is None:
            if problem.has_data and problem.default_data is None:
                raise SpecError(
                    f"the problem {problem.name!r} has no default data: pass --data FILE "
                    "or give data={...} in the spec"
                )
            data = problem.default_data or {}
        super().__init__(kernels, problem.layout, data)
        self.problem = problem

    def warm_up(self, methods: tuple[str, ...] = METHODS, show_progress: bool = False) -> None:
        """Compile (or load from Numba's cache) every kernel the methods use."""
        started = time.perf_counter()
        x = self.problem.initial_point.copy()
        y = x + 1e-3
        calls: list[tuple[str, Callable[[], Any]]] = [
            ("loss", lambda: self.loss(x)),
            ("gradient", lambda: self.gradient(x)),
        ]
        for method in methods:
            dg, jac = self.discrete_gradient(method), self.jacobian(method)
            calls.append((f"dg {method}", lambda dg=dg: (dg(x, y), dg(x, x))))
            calls.append((f"jacobian {method}", lambda jac=jac: (jac(x, y), jac(x, x))))
        for _label, call in progress(calls, "compiling kernels", show_progress):
            call()
        log.info("compiled kernels in %.2f s", time.perf_counter() - started)


def compile_problem(
    problem: Loss,
    data: dict[str, Any] | None = None,
    out: Path | None = None,
    show_progress: bool = False,
    methods: tuple[str, ...] = METHODS,
) -> CompiledProblem:
    """Generate, import and compile the kernels of `problem`, with `data` bound."""
    directory = generate(problem, out, show_progress)
    compiled = CompiledProblem(problem, load_kernels(directory), data)
    compiled.warm_up(methods, show_progress)
    return compiled


def compile_network(
    network: Network,
    data: dict[str, Any] | None = None,
    out: Path | None = None,
    show_progress: bool = False,
) -> MatrixFreeKernels:
    """Generate, import and compile the kernels of a network, with `data` bound."""
    if data is None:
        if network.default_data is None:
            raise SpecError(
                f"the network {network.name!r} has no default data: pass --data FILE "
                "or give data={...} in the spec"
            )
        data = network.default_data
    directory = generate(network, out, show_progress)
    bound = MatrixFreeKernels(load_kernels(directory), network.layout, data)
    started = time.perf_counter()
    x = network.initial_point.copy()
    for _label, call in progress(
        [
            ("loss", lambda: bound.loss(x)),
            ("gradient", lambda: bound.loss_gradient(x)),
            ("hvp", lambda: bound.hvp(x, x)),
        ],
        "compiling kernels",
        show_progress,
    ):
        call()
    log.info("compiled network kernels in %.2f s", time.perf_counter() - started)
    return bound


def compile_matrix_free(
    problem: Loss,
    data: dict[str, Any] | None = None,
    out: Path | None = None,
    show_progress: bool = False,
) -> MatrixFreeKernels:
    """Generate, import and compile the reverse-mode kernels of a loss, with `data` bound.

    The kernels (`reverse_emit.py`) give the loss, its gradient and Hessian-vector products
    without the dense symbolic Hessian, for losses with too many parameters for `lower`.
    Without `out` they go to a cache folder named after the problem and a hash of the source.
    """
    if data is None:
        if problem.has_data and problem.default_data is None:
            raise SpecError(
                f"the problem {problem.name!r} has no default data: pass --data FILE "
                "or give data={...} in the spec"
            )
        data = problem.default_data or {}
    # NOTE: the cache folder is named by a hash of the generated source, so the derivation
    # runs again on every call. It took 4 s of a 10 s cached start of examples/mlp_sympy.py.
    directory = generate(problem, out, show_progress, reverse=True)
    bound = MatrixFreeKernels(load_kernels(directory), problem.layout, data)
    started = time.perf_counter()
    x = problem.initial_point.copy()
    for _label, call in progress(
        [
            ("loss", lambda: bound.loss(x)),
            ("gradient", lambda: bound.loss_gradient(x)),
            ("hvp", lambda: bound.hvp(x, x)),
        ],
        "compiling kernels",
        show_progress,
    ):
        call()
    log.info("compiled matrix-free kernels in %.2f s", time.perf_counter() - started)
    return bound
