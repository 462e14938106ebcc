"""Derivation safeguards: checked closed forms, time bounds, templates and kernel options."""

from __future__ import annotations

import jinja2
import pytest
import sympy as sp

import dgcodegen as dg
from dgcodegen import derive
from dgcodegen.derive import Derivation, _closed_form_segment_integral
from dgcodegen.emit import environment
from dgcodegen.runtime import cache_directory, generate


@pytest.fixture
def two_parameters() -> Derivation:
    q = dg.parameter("closed_q", 2)
    return Derivation(dg.Loss(objective=q[0] ** 2 * q[1] ** 2)), q


def test_closed_form_polynomial_exact(two_parameters) -> None:
    derivation, q = two_parameters
    closed = _closed_form_segment_integral(derivation, q[0] ** 2 * q[1] ** 2)
    assert closed is not None
    mean_value, _ = closed
    at_x = [g.xreplace(dict(zip(derivation.y, derivation.x))) for g in mean_value]
    assert sp.expand(at_x[0] - 2 * derivation.x[0] * derivation.x[1] ** 2) == 0


def test_closed_form_singular_rejected(two_parameters) -> None:
    # integrate() returns a case split for exp along the segment (and 1 at y = x for the
    # degenerate branch); such closed forms lose digits near y = x and are not used.
    derivation, q = two_parameters
    assert _closed_form_segment_integral(derivation, q[0] * sp.exp(q[1])) is None


def test_closed_form_time_bound(two_parameters, monkeypatch) -> None:
    derivation, q = two_parameters
    term = q[0] ** 2 * q[1] ** 2
    assert _closed_form_segment_integral(derivation, term) is not None
    monkeypatch.setattr(derive, "CLOSED_FORM_SECONDS", 1e-6)
    assert _closed_form_segment_integral(derivation, term) is None


def test_jinja_environment_is_strict() -> None:
    env = environment()
    assert env.undefined is jinja2.StrictUndefined
    assert env.autoescape is False
    assert env.trim_blocks
    assert env.lstrip_blocks
    assert env.keep_trailing_newline


def test_kernel_options_exclude_fastmath(tmp_path) -> None:
    q = dg.parameter("options_q", 2)
    directory = generate(dg.Loss(objective=q.dot(q), name="options"), tmp_path / "options")
    source = (directory / "kernels.py").read_text()
    assert (
        'OPTIONS = {"cache": _cache_is_usable(), "error_model": "numpy", "fastmath": False}'
        in source
    )
    assert "fastmath=True" not in source


def test_cache_folder_named_by_source_hash(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DGCODEGEN_CACHE", str(tmp_path))
    q = dg.parameter("hashed_q", 2)
    first = generate(dg.Loss(objective=q.dot(q), name="hashed"))
    second = generate(dg.Loss(objective=q.dot(q) + q[0], name="hashed"))
    assert first.parent == cache_directory()
    assert first.name.startswith("hashed-")
    assert first != second
    assert (first / "kernels.py").is_file()


def test_dense_sample_term_warns(caplog) -> None:
    w = dg.parameter("dense_w", 21)
    s = dg.data("dense_s")
    problem = dg.Loss(per_sample=sp.exp(w[0] * s) * w[1] ** 2, regularizer=w.dot(w))
    with caplog.at_level("WARNING", logger="dgcodegen"):
        Derivation(problem)
    assert "not of the form l(a . x + c)" in caplog.text
