"""Tests of the declaration stage: the DSL, its input validation and `load_spec`.

Declarations live in a registry shared by the whole process, so each test declares
names of its own and a name is never reused with a different shape.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import dgcodegen as dg
from dgcodegen.dsl import load_spec
from dgcodegen.errors import SpecError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _regression_loss(prefix: str) -> dg.Loss:
    """Least squares with a 3-vector data column `<prefix>x` and a scalar `<prefix>y`."""
    w = dg.parameter(f"{prefix}w", 3)
    x = dg.data(f"{prefix}x", 3)
    y = dg.data(f"{prefix}y")
    return dg.Loss(per_sample=(w.dot(x) - y) ** 2)


def _regression_data(prefix: str, n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"{prefix}x": rng.standard_normal((n, 3)), f"{prefix}y": rng.standard_normal(n)}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# Symbols and functions in a loss


def test_undeclared_symbol_named() -> None:
    w = dg.parameter("undeclared_w")
    stray = sp.Symbol("stray")
    with pytest.raises(SpecError, match="unknown symbol 'stray'"):
        dg.Loss(objective=w**2 + stray)


def test_plain_symbol_with_declared_name() -> None:
    # A plain real Symbol that prints like a declared entry is still not declared.
    dg.parameter("lookalike", 2)
    impostor = sp.Symbol("lookalike[0]", real=True)
    with pytest.raises(SpecError, match=re.escape("unknown symbol 'lookalike[0]'")):
        dg.Loss(objective=impostor**2)


def test_matrix_objective_rejected() -> None:
    w = dg.parameter("matrix_objective_w", 2)
    with pytest.raises(SpecError, match=re.escape("the objective must be a scalar")) as error:
        dg.Loss(objective=w)
    assert "(2, 1)" in str(error.value)


def test_matrix_per_sample_rejected() -> None:
    w = dg.parameter("matrix_sample_w", 2)
    x = dg.data("matrix_sample_x", 2)
    with pytest.raises(SpecError, match=re.escape("the per-sample term must be a scalar")) as error:
        dg.Loss(per_sample=w.multiply_elementwise(x).T)
    assert "(1, 2)" in str(error.value)


def test_one_by_one_matrix_accepted() -> None:
    w = dg.parameter("one_by_one_w", 2)
    loss = dg.Loss(objective=w.T * w)
    assert loss.free_term == w[0] ** 2 + w[1] ** 2


def test_undefined_function_named() -> None:
    w = dg.parameter("undefined_function_w")
    f = sp.Function("f")
    with pytest.raises(SpecError, match="unsupported function f in f"):
        dg.Loss(objective=f(w))


def test_gamma_function_named() -> None:
    w = dg.parameter("gamma_w")
    with pytest.raises(SpecError, match="unsupported function gamma"):
        dg.Loss(objective=sp.gamma(w))


def test_unsupported_function_in_sample() -> None:
    w = dg.parameter("floor_w")
    x = dg.data("floor_x")
    with pytest.raises(SpecError, match="the per-sample term uses the unsupported function floor"):
        dg.Loss(per_sample=sp.floor(w * x))


def test_unevaluated_sum_rejected() -> None:
    w = dg.parameter("unevaluated_sum_w")
    k = sp.Symbol("k", integer=True)
    with pytest.raises(SpecError, match="Sum"):
        dg.Loss(objective=sp.Sum(k * w**2, (k, 1, 3)))


def test_unevaluated_derivative_rejected() -> None:
    w = dg.parameter("unevaluated_derivative_w")
    with pytest.raises(SpecError, match="unevaluated Derivative"):
        dg.Loss(objective=sp.Derivative(w**3, w))


def test_imaginary_number_rejected() -> None:
    w = dg.parameter("imaginary_w")
    with pytest.raises(SpecError, match="non-real number I"):
        dg.Loss(objective=w**2 + sp.I * w)


def test_infinite_coefficient_rejected() -> None:
    w = dg.parameter("infinite_w")
    with pytest.raises(SpecError, match="not finite: oo"):
        dg.Loss(objective=sp.oo * w)


def test_constant_loss_rejected() -> None:
    with pytest.raises(SpecError, match="depends on no parameter"):
        dg.Loss(objective=sp.Integer(3))


# Data arrays


def test_data_wrong_vector_width() -> None:
    loss = _regression_loss("width_")
    data = _regression_data("width_")
    data["width_x"] = data["width_x"][:, :2]
    with pytest.raises(SpecError, match="data for 'width_x' has shape \\(4, 2\\)") as error:
        loss.validate_data(data)
    assert "expected (n_samples, 3)" in str(error.value)


def test_data_scalar_column_too_wide() -> None:
    loss = _regression_loss("scalar_")
    data = _regression_data("scalar_")
    data["scalar_y"] = np.ones((4, 2))
    with pytest.raises(SpecError, match="data for 'scalar_y'") as error:
        loss.validate_data(data)
    assert "expected (n_samples,)" in str(error.value)


def test_data_scalar_column_as_column_vector() -> None:
    loss = _regression_loss("column_")
    data = _regression_data("column_")
    data["column_y"] = data["column_y"][:, None]
    validated = loss.validate_data(data)
    assert validated["column_y"].shape == (4, 1)


def test_data_validated_as_2d_float64() -> None:
    loss = _regression_loss("float_")
    data = {"float_x": [[1, 2, 3], [4, 5, 6]], "float_y": [1, 2]}
    validated = loss.validate_data(data)
    assert validated["float_x"].dtype == np.float64
    assert validated["float_y"].shape == (2, 1)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_data_nonfinite_names_row(bad_value: float) -> None:
    loss = _regression_loss("nonfinite_")
    data = _regression_data("nonfinite_")
    data["nonfinite_x"][2, 1] = bad_value
    with pytest.raises(SpecError, match="data for 'nonfinite_x' contains nan or inf") as error:
        loss.validate_data(data)
    assert "first at row 2" in str(error.value)


def test_data_missing_column_named() -> None:
    loss = _regression_loss("missing_")
    data = _regression_data("missing_")
    del data["missing_y"]
    with pytest.raises(SpecError, match="missing data for the column 'missing_y'"):
        loss.validate_data(data)


def test_data_unknown_column_named() -> None:
    loss = _regression_loss("unknown_")
    data = _regression_data("unknown_")
    data["unknown_z"] = np.ones(4)
    with pytest.raises(SpecError, match="data given for 'unknown_z', which is not a data column"):
        loss.validate_data(data)


def test_data_unequal_sample_counts() -> None:
    loss = _regression_loss("counts_")
    data = _regression_data("counts_")
    data["counts_y"] = data["counts_y"][:3]
    with pytest.raises(SpecError, match="different sample counts") as error:
        loss.validate_data(data)
    assert "'counts_x': 4" in str(error.value)
    assert "'counts_y': 3" in str(error.value)


def test_data_without_samples_rejected() -> None:
    loss = _regression_loss("empty_")
    with pytest.raises(SpecError, match="no samples"):
        loss.validate_data({"empty_x": np.empty((0, 3)), "empty_y": np.empty(0)})


def test_data_non_numeric_rejected() -> None:
    loss = _regression_loss("text_")
    data = _regression_data("text_")
    data["text_y"] = ["a", "b", "c", "d"]
    with pytest.raises(SpecError, match="data for 'text_y' is not numeric"):
        loss.validate_data(data)


def test_data_for_data_free_loss() -> None:
    w = dg.parameter("data_free_w")
    loss = dg.Loss(objective=w**2)
    with pytest.raises(SpecError, match="declares no data columns"):
        loss.validate_data({"anything": np.ones(3)})


def test_default_data_validated_at_construction() -> None:
    w = dg.parameter("default_data_w")
    x = dg.data("default_data_x")
    with pytest.raises(SpecError, match="'default_data_x' contains nan or inf"):
        dg.Loss(per_sample=(w - x) ** 2, data={"default_data_x": [1.0, np.nan]})


# Names and shapes


@pytest.mark.parametrize("name", ["2x", "a b", "", "__import__", "x__y", "x_", "_x", "w[0]"])
def test_invalid_parameter_name(name: str) -> None:
    with pytest.raises(SpecError, match=re.escape(f"invalid parameter name {name!r}")):
        dg.parameter(name)


@pytest.mark.parametrize("name", ["2x", "a b", "", "__import__", "x__y"])
def test_invalid_data_name(name: str) -> None:
    with pytest.raises(SpecError, match=re.escape(f"invalid data name {name!r}")):
        dg.data(name)


def test_non_string_name_rejected() -> None:
    with pytest.raises(SpecError, match="invalid parameter name 5"):
        dg.parameter(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [0, -1, (2, 0), (0, 3), (-2,)])
def test_nonpositive_extent_rejected(shape: int | tuple[int, ...]) -> None:
    with pytest.raises(SpecError, match="every extent must be a positive integer"):
        dg.parameter("bad_extent", shape)


def test_rank_three_parameter_rejected() -> None:
    with pytest.raises(SpecError, match="'rank_three' has shape \\(2, 2, 2\\), of rank 3"):
        dg.parameter("rank_three", (2, 2, 2))


def test_rank_two_data_rejected() -> None:
    with pytest.raises(SpecError, match="declare at most rank 1"):
        dg.data("rank_two", (2, 2))


def test_fractional_extent_rejected() -> None:
    with pytest.raises(SpecError, match="every extent must be a positive integer"):
        dg.parameter("fractional_extent", (2.5,))  # type: ignore[arg-type]


def test_float_shape_rejected() -> None:
    with pytest.raises(SpecError, match="float_shape"):
        dg.parameter("float_shape", 2.0)  # type: ignore[arg-type]


def test_redeclared_name_keeps_shape() -> None:
    first = dg.parameter("redeclared", 2)
    dg.parameter("redeclared", 3)
    loss = dg.Loss(objective=first.dot(first))
    assert len(loss.parameter_symbols) == 2


# Initial values


def test_initial_wrong_shape_named() -> None:
    w = dg.parameter("initial_shape_w", 3)
    with pytest.raises(SpecError, match="initial value of 'initial_shape_w' has shape") as error:
        dg.Loss(objective=w.dot(w), initial={"initial_shape_w": [1.0, 2.0]})
    assert "expected (3,)" in str(error.value)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_initial_nonfinite_named(bad_value: float) -> None:
    w = dg.parameter("initial_finite_w", 2)
    with pytest.raises(SpecError, match="initial value of 'initial_finite_w' is not finite"):
        dg.Loss(objective=w.dot(w), initial={"initial_finite_w": [0.0, bad_value]})


def test_initial_unknown_parameter_named() -> None:
    w = dg.parameter("initial_known_w")
    with pytest.raises(
        SpecError, match="initial value given for 'initial_other', which is not a parameter"
    ):
        dg.Loss(objective=w**2, initial={"initial_other": 1.0})


def test_initial_non_numeric_rejected() -> None:
    w = dg.parameter("initial_text_w")
    with pytest.raises(SpecError, match="initial_text_w"):
        dg.Loss(objective=w**2, initial={"initial_text_w": "abc"})


def test_initial_scalar_broadcast() -> None:
    w = dg.parameter("initial_broadcast_w", 3)
    loss = dg.Loss(objective=w.dot(w), initial={"initial_broadcast_w": 2.0})
    np.testing.assert_array_equal(loss.initial_point, [2.0, 2.0, 2.0])


def test_initial_missing_starts_zero() -> None:
    a = dg.parameter("initial_zero_a", 2)
    b = dg.parameter("initial_zero_b")
    loss = dg.Loss(objective=a.dot(a) + b**2, initial={"initial_zero_b": 5.0})
    np.testing.assert_array_equal(loss.initial_point, [0.0, 0.0, 5.0])


# Terms and reduction


def test_data_in_regularizer_named() -> None:
    w = dg.parameter("regularizer_data_w")
    x = dg.data("regularizer_data_x")
    with pytest.raises(SpecError, match="uses the data symbol 'regularizer_data_x'"):
        dg.Loss(per_sample=(w - x) ** 2, regularizer=w * x)


def test_data_in_objective_named() -> None:
    w = dg.parameter("objective_data_w")
    x = dg.data("objective_data_x")
    with pytest.raises(SpecError, match="uses the data symbol 'objective_data_x'"):
        dg.Loss(objective=(w - x) ** 2)


def test_objective_and_regularizer_rejected() -> None:
    w = dg.parameter("both_terms_w")
    with pytest.raises(SpecError, match="either objective or regularizer"):
        dg.Loss(objective=w**2, regularizer=w**4)


@pytest.mark.parametrize("reduction", ["average", "Sum", "", None])
def test_bad_reduction_named(reduction: object) -> None:
    w = dg.parameter("reduction_w")
    x = dg.data("reduction_x")
    with pytest.raises(SpecError, match=re.escape(f"got {reduction!r}")):
        dg.Loss(per_sample=(w - x) ** 2, reduction=reduction)  # type: ignore[arg-type]


def test_mean_reduction_accepted() -> None:
    w = dg.parameter("mean_w")
    x = dg.data("mean_x")
    summed = dg.Loss(per_sample=(w - x) ** 2)
    averaged = dg.Loss(per_sample=(w - x) ** 2, reduction="mean")
    assert averaged.reduction == "mean"
    assert averaged.sample_term == summed.sample_term
    assert averaged.fingerprint() != summed.fingerprint()


# Parameter symbols


def test_scalar_parameter_is_symbol() -> None:
    b = dg.parameter("scalar_b")
    loss = dg.Loss(objective=b**2)
    assert isinstance(b, sp.Symbol)
    assert b.is_real
    assert loss.parameter_symbols == [b]


def test_vector_parameter_symbols() -> None:
    w = dg.parameter("vector_w", 4)
    loss = dg.Loss(objective=w.dot(w))
    assert w.shape == (4, 1)
    assert [s.name for s in loss.parameter_symbols] == [f"vector_w[{i}]" for i in range(4)]


def test_matrix_parameter_row_major() -> None:
    m = dg.parameter("matrix_m", (2, 3))
    loss = dg.Loss(objective=sum(entry**2 for entry in m))
    names = [s.name for s in loss.parameter_symbols]
    assert m.shape == (2, 3)
    assert len(names) == 6
    assert names[:4] == ["matrix_m[0, 0]", "matrix_m[0, 1]", "matrix_m[0, 2]", "matrix_m[1, 0]"]
    assert loss.parameter_symbols[1] == m[0, 1]


def test_parameters_in_declaration_order() -> None:
    # Declared in the order w, b, M, which is neither alphabetical nor the order of the loss.
    w = dg.parameter("order_w", 2)
    b = dg.parameter("order_b")
    m = dg.parameter("order_M", (2, 2))
    loss = dg.Loss(objective=sum(entry**2 for entry in m) + b**2 + w.dot(w))
    assert [d.name for d in loss.parameters] == ["order_w", "order_b", "order_M"]
    assert loss.parameter_symbols == [*w, b, *m]


def test_columns_in_declaration_order() -> None:
    w = dg.parameter("column_order_w")
    z = dg.data("column_order_z")
    a = dg.data("column_order_a")
    loss = dg.Loss(per_sample=(w * a - z) ** 2)
    assert [d.name for d in loss.columns] == ["column_order_z", "column_order_a"]


def test_data_symbols_by_column() -> None:
    loss = _regression_loss("columns_")
    assert [d.name for d in loss.columns] == ["columns_x", "columns_y"]
    assert [len(symbols) for symbols in loss.data_symbols] == [3, 1]
    assert loss.has_data


def test_split_parameters_round_trip() -> None:
    w = dg.parameter("split_w", 3)
    b = dg.parameter("split_b")
    m = dg.parameter("split_m", (2, 2))
    loss = dg.Loss(objective=w.dot(w) + b**2 + sum(entry**2 for entry in m))
    vector = np.arange(8.0)
    parts = loss.split_parameters(vector)
    assert parts["split_b"].shape == ()
    assert parts["split_m"].shape == (2, 2)
    assert parts["split_w"].shape == (3,)
    joined = np.concatenate([parts[d.name].ravel() for d in loss.parameters])
    np.testing.assert_array_equal(joined, vector)


def test_join_inverts_split() -> None:
    w = dg.parameter("join_w", 3)
    m = dg.parameter("join_m", (2, 2))
    loss = dg.Loss(objective=w.dot(w) + sum(entry**2 for entry in m))
    vector = np.linspace(-1.0, 1.0, 7)
    np.testing.assert_array_equal(loss.join_parameters(loss.split_parameters(vector)), vector)


def test_join_missing_parameter_named() -> None:
    w = dg.parameter("join_missing_w", 2)
    b = dg.parameter("join_missing_b")
    loss = dg.Loss(objective=w.dot(w) + b**2)
    with pytest.raises(SpecError, match="no value given for the parameter 'join_missing_b'"):
        loss.join_parameters({"join_missing_w": [1.0, 2.0]})


def test_join_wrong_size_named() -> None:
    w = dg.parameter("join_size_w", 2)
    loss = dg.Loss(objective=w.dot(w))
    with pytest.raises(SpecError, match="value of 'join_size_w' has 3 entries, expected 2"):
        loss.join_parameters({"join_size_w": [1.0, 2.0, 3.0]})


def test_split_matrix_row_major() -> None:
    m = dg.parameter("split_row_m", (2, 3))
    loss = dg.Loss(objective=sum(entry**2 for entry in m))
    parts = loss.split_parameters(np.arange(6.0))
    np.testing.assert_array_equal(parts["split_row_m"], [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])


# Fingerprint


def test_fingerprint_stable_across_loads() -> None:
    first = load_spec(EXAMPLES / "rosenbrock.py")
    second = load_spec(EXAMPLES / "rosenbrock.py")
    assert first is not second
    assert first.fingerprint() == second.fingerprint()


def test_fingerprint_changes_with_loss() -> None:
    w = dg.parameter("fingerprint_w", 2)
    base = dg.Loss(objective=w.dot(w))
    same = dg.Loss(objective=w.dot(w))
    changed = dg.Loss(objective=w.dot(w) + w[0])
    assert base.fingerprint() == same.fingerprint()
    assert base.fingerprint() != changed.fingerprint()


def test_fingerprint_ignores_initial_point() -> None:
    w = dg.parameter("fingerprint_initial_w", 2)
    origin = dg.Loss(objective=w.dot(w))
    shifted = dg.Loss(objective=w.dot(w), initial={"fingerprint_initial_w": [1.0, 2.0]})
    assert origin.fingerprint() == shifted.fingerprint()


# load_spec


def test_load_spec_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.py"
    with pytest.raises(SpecError, match="spec file not found") as error:
        load_spec(missing)
    assert str(missing) in str(error.value)


def test_load_spec_raising_file(tmp_path: Path) -> None:
    spec = _write(tmp_path / "raising.py", "raise RuntimeError('spec exploded')\n")
    with pytest.raises(SpecError, match="RuntimeError: spec exploded") as error:
        load_spec(spec)
    assert str(spec) in str(error.value)


def test_load_spec_syntax_error(tmp_path: Path) -> None:
    spec = _write(tmp_path / "broken.py", "problem = (\n")
    with pytest.raises(SpecError, match="SyntaxError"):
        load_spec(spec)


def test_load_spec_without_problem(tmp_path: Path) -> None:
    spec = _write(tmp_path / "no_problem.py", "import dgcodegen as dg\nw = dg.parameter('w')\n")
    with pytest.raises(SpecError, match="must bind a dg.Loss") as error:
        load_spec(spec)
    assert "NoneType" in str(error.value)


def test_load_spec_problem_not_loss(tmp_path: Path) -> None:
    spec = _write(tmp_path / "wrong_type.py", "problem = 42\n")
    with pytest.raises(SpecError, match="found int"):
        load_spec(spec)


def test_load_spec_keeps_spec_error(tmp_path: Path) -> None:
    spec = _write(tmp_path / "bad_name.py", "import dgcodegen as dg\nw = dg.parameter('2w')\n")
    with pytest.raises(SpecError, match="invalid parameter name '2w'"):
        load_spec(spec)


def test_load_spec_invalid_stem(tmp_path: Path) -> None:
    text = "import dgcodegen as dg\nw = dg.parameter('stem_w')\nproblem = dg.Loss(objective=w**2)\n"
    spec = _write(tmp_path / "my-spec.py", text)
    with pytest.raises(SpecError, match="problem name 'my-spec' is not a valid identifier"):
        load_spec(spec)


def test_load_spec_names_problem(tmp_path: Path) -> None:
    text = (
        "import dgcodegen as dg\nw = dg.parameter('named_w')\nproblem = dg.Loss(objective=w**2)\n"
    )
    spec = _write(tmp_path / "quadratic_bowl.py", text)
    assert load_spec(spec).name == "quadratic_bowl"


def test_load_spec_rosenbrock_example() -> None:
    problem = load_spec(EXAMPLES / "rosenbrock.py")
    assert problem.name == "rosenbrock"
    assert [s.name for s in problem.parameter_symbols] == ["x[0]", "x[1]"]
    np.testing.assert_array_equal(problem.initial_point, [-1.2, 1.0])


def test_same_name_twice_rejected() -> None:
    first = dg.parameter("twice_w", 2)
    second = dg.parameter("twice_w", 2)
    with pytest.raises(SpecError, match="two declarations named 'twice_w'"):
        dg.Loss(objective=first.dot(first) + second.dot(second))


def test_parameter_and_column_same_name() -> None:
    w = dg.parameter("shared_name")
    column = dg.data("shared_name")
    with pytest.raises(SpecError, match="two declarations named 'shared_name'"):
        dg.Loss(per_sample=(w - column) ** 2)


def test_per_sample_without_data_rejected() -> None:
    w = dg.parameter("sampleless_w", 2)
    with pytest.raises(SpecError, match="uses no data column"):
        dg.Loss(per_sample=w.dot(w))


def test_nan_constant_rejected() -> None:
    w = dg.parameter("nan_w")
    with pytest.raises(SpecError, match="not finite"):
        dg.Loss(objective=w**2 + float("nan"))
