"""Verify a system: the discrete gradient identities of `H` and the energy identity of the step.

For the step `y = x + h B DG(x, y)`, dotting with `DG` and using the mean-value identity
`DG . (y - x) = H(y) - H(x)` gives `H(y) - H(x) = h DG^T B DG`. So

- for skew `S` (`S + S^T` reduces to zero), `B = S(m)` gives `H(y) = H(x)`;
- for negative semidefinite `S`, `B = S(m)` gives `H(y) <= H(x)`;
- for constant skew `S`, the fourth-order `B = S - h^2/12 S Hess(m) S Hess(m) S` is skew
  as well (proven entry by entry), so `H(y) = H(x)`.

Each energy identity is as strong as the weaker of the mean-value identity of its discrete
gradient and the property of `B`: `proven` when both are proven, `checked` when the
mean-value identity was only checked numerically, `failed` when it failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sympy as sp

from .calculus import diff
from .errors import InternalError
from .proofs import prove_zero
from .system import FOURTH_ORDER, GENERAL, NEGATIVE_SEMIDEFINITE, SKEW, System
from .verify import CHECKED, FAILED, PROVEN, Report, Result, verify

NONE = "none"
"""Status of an energy identity that the structure matrix does not imply."""


@dataclass
class SystemReport(Report):
    """The discrete gradient results of the energy and the energy identities of the steps."""

    structure: str = ""
    """Classification of S, with how it was established."""

    def as_dict(self) -> dict:
        record = super().as_dict()
        record["structure"] = self.structure
        return record

    def certificate(self) -> str:
        lines = super().certificate().splitlines()
        lines[0] = lines[0].replace("parameters)", "state entries)")
        lines.insert(1, f"structure matrix: {self.structure}")
        return "\n".join(lines) + "\n"


def verify_system(system: System, seed: int = 0) -> SystemReport:
    """Check the discrete gradients of the energy and the energy identity of every step."""
    base = verify(system.loss, seed=seed)
    classification = system.classification
    constant = "constant" if classification.constant else "state-dependent"
    report = SystemReport(
        base.spec,
        base.parameters,
        dict(base.symmetric),
        structure=f"{classification.kind}, {constant}; {classification.method}",
    )
    for result in base.results:
        if result.identity == "energy":
            mean_value = _result(base, "mean-value", result.discrete_gradient)
            report.results.append(_energy_result(system, result.discrete_gradient, mean_value))
        else:
            report.results.append(result)
    if classification.constant:
        mean_value = _result(base, "mean-value", "mean-value")
        report.results.append(_fourth_order_result(system, mean_value))
    return report


def _result(report: Report, identity: str, name: str) -> Result:
    for result in report.results:
        if result.identity == identity and result.discrete_gradient == name:
            return result
    raise InternalError(f"verify produced no {identity} result for {name}")


def _energy_result(system: System, name: str, mean_value: Result) -> Result:
    kind = system.classification.kind
    if kind == GENERAL:
        text = "no energy identity: S is neither skew nor negative semidefinite"
        return Result("energy", name, NONE, text)
    claim = "H(y) = H(x)" if kind == SKEW else "H(y) <= H(x)"
    reason = {
        SKEW: "h DG^T S(m) DG = 0 because S is skew",
        NEGATIVE_SEMIDEFINITE: "h DG^T S(m) DG <= 0 because S is negative semidefinite",
    }[kind]
    return _combine(name, claim, reason, mean_value)


def _combine(name: str, claim: str, reason: str, mean_value: Result) -> Result:
    if mean_value.status == FAILED:
        return Result("energy", name, FAILED, f"{claim} not shown: the mean-value identity failed")
    status = PROVEN if mean_value.status == PROVEN else CHECKED
    method = f"{status}: {claim}, since H(y) - H(x) = {reason} (mean-value identity {status})"
    return Result("energy", name, status, method)


def _fourth_order_result(system: System, mean_value: Result) -> Result:
    """Energy identity of the fourth-order mean value, which needs constant skew S."""
    if system.classification.kind != SKEW:
        text = "no energy identity: S - h^2/12 S H S H S is skew only for skew S"
        return Result("energy", FOURTH_ORDER, NONE, text)
    started = time.perf_counter()
    s = sp.Matrix(system.structure)
    state = system.state_symbols
    hessian = sp.Matrix([[diff(system.energy, a, b) for b in state] for a in state])
    correction = s * hessian * s * hessian * s
    method = prove_zero(list(correction + correction.T))
    if method is None:
        result = Result(
            "energy",
            FOURTH_ORDER,
            FAILED,
            "failed: S H S H S + (S H S H S)^T did not reduce to zero",
        )
    else:
        reason = f"h DG^T B DG = 0 because B = S - h^2/12 S H S H S is skew ({method})"
        result = _combine(FOURTH_ORDER, "H(y) = H(x)", reason, mean_value)
    result.seconds = time.perf_counter() - started
    return result
