"""Exception classes: user input errors apart from internal errors."""


class DgcodegenError(Exception):
    """Base class of every error that dgcodegen raises on purpose."""


class SpecError(DgcodegenError):
    """Invalid spec or input data; the message names the value and the fix."""


class DerivationError(DgcodegenError):
    """A derivation step could not produce a valid expression for this spec."""


class CodegenError(DgcodegenError):
    """An expression cannot be rendered into kernel code."""


class SolverError(DgcodegenError):
    """The implicit solve failed in a way that no step-size reduction repairs."""


class InternalError(DgcodegenError):
    """A bug in dgcodegen; please report it with the spec that triggered it."""
