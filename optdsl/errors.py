"""Exceptions and source locations.

User mistakes (a bad ``.opt`` file, a bad keyword at construction, a bad state_dict) raise
subclasses of :class:`OptdslError`. A bug in optdsl itself raises
:class:`InternalCompilerError`, which deliberately is *not* an ``OptdslError``, so that
``except OptdslError`` never hides a compiler bug.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A 1-based, end-exclusive region of a source file."""

    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True)
class SourceFile:
    """The text of a spec and the name it is reported under (a path or ``<string>``)."""

    name: str
    text: str

    def line_text(self, line: int) -> str:
        # Only "\n" ends a line, as for the parser (str.splitlines also splits at \f,
        # \u2028 and lone \r, which would show the wrong line).
        lines = self.text.split("\n")
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""


@dataclass(frozen=True)
class Diagnostic:
    """One problem at one place: ``file:line:col: message; hint``, the line and a caret."""

    source: SourceFile
    span: Span
    message: str
    hint: str | None = None

    def render(self) -> str:
        head = f"{self.source.name}:{self.span.line}:{self.span.column}: {self.message}"
        if self.hint:
            head += f"; {self.hint}"
        text = self.source.line_text(self.span.line)
        if not text:
            return head
        start = self.span.column - 1
        if self.span.end_line == self.span.line and self.span.end_column > self.span.column:
            width = self.span.end_column - self.span.column
        else:
            width = 1
        width = max(1, min(width, len(text) - start)) if start < len(text) else 1
        # Keep tabs in the caret line so the caret lines up under tab-indented code.
        pad = "".join(ch if ch == "\t" else " " for ch in text[:start])
        return f"{head}\n    {text}\n    {pad}{'^' * width}"


class OptdslError(Exception):
    """Base class of every error caused by user input."""


class SpecError(OptdslError):
    """A problem in a ``.opt`` spec. Carries one or more located diagnostics."""

    stage = "spec"

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(d.render() for d in self.diagnostics))

    # The first diagnostic's fields, for callers that want one location.
    @property
    def diagnostic(self) -> Diagnostic:
        return self.diagnostics[0]

    @property
    def file(self) -> str:
        return self.diagnostic.source.name

    @property
    def line(self) -> int:
        return self.diagnostic.span.line

    @property
    def column(self) -> int:
        return self.diagnostic.span.column

    @property
    def message(self) -> str:
        return self.diagnostic.message

    @property
    def hint(self) -> str | None:
        return self.diagnostic.hint

    @property
    def source_line(self) -> str:
        return self.diagnostic.source.line_text(self.line)


class ParseError(SpecError):
    """The text is not a well-formed ``.opt`` file."""

    stage = "parse"


class CheckError(SpecError):
    """The spec parses but is not a valid program (names, types, declarations)."""

    stage = "check"


class HyperError(OptdslError, ValueError):
    """A bad hyperparameter at construction or in ``param_groups``."""


class HyperTypeError(HyperError, TypeError):
    """A hyperparameter keyword that is unknown, missing, or of the wrong type."""


class ScheduleError(OptdslError, ValueError):
    """A schedule stepped wrongly: without the metric it reads, past its end, or after the
    optimizer's param groups changed."""


class StateDictError(OptdslError, ValueError):
    """A state_dict that does not fit this optimizer. The optimizer was left untouched."""


class CheckpointError(OptdslError):
    """A checkpoint that cannot be saved or loaded (see :mod:`optdsl.checkpoint`). A failed
    ``optdsl.load`` leaves the optimizer, scheduler, params and scaler exactly as they were;
    a failed ``optdsl.save`` leaves the file at its path as it was."""


class CheckpointCorruptError(CheckpointError, ValueError):
    """The file is not a complete, intact optdsl checkpoint: truncated, damaged, or not a
    checkpoint at all."""


class CheckpointChecksumError(CheckpointCorruptError):
    """The file parses, but its contents do not match the checksums stored in it."""


class CheckpointVersionError(CheckpointError):
    """The file was written in a newer checkpoint format than this optdsl reads."""


class CheckpointMismatchError(CheckpointError, ValueError):
    """An intact checkpoint that does not fit what it is loaded into: another optimizer class
    or spec, other params, shapes or dtypes, another schedule."""


class GradientError(OptdslError, ValueError):
    """A gradient that does not fit its parameter (its shape, or where it lives), found by
    ``step()`` before it changed anything."""


class GradientTypeError(GradientError, TypeError):
    """A gradient that is not an array, or not of its parameter's dtype."""


class ParamGroupError(OptdslError, ValueError):
    """Param groups that cannot be stepped: no parameters, or a parameter listed twice (in
    one group or in two)."""


class ParamGroupTypeError(ParamGroupError, TypeError):
    """A group's ``params`` that is not an ordered collection of parameters (a set, say)."""


class NonFiniteNormError(OptdslError, RuntimeError):
    """The total gradient norm is nan or inf and ``error_if_nonfinite=True`` (torch raises
    a RuntimeError there); or an inf norm was asked of an empty gradient, which has none."""


class SparseGradientError(GradientError):
    """A row-sparse gradient (:class:`optdsl.RowSparse`) that does not fit its parameter:
    indices that are not 1-D or out of range, values of the wrong shape or device, a 0-d
    parameter."""


class SparseGradientTypeError(SparseGradientError, GradientTypeError):
    """A row-sparse gradient of the wrong kind: indices that are not integers, values not
    of the parameter's dtype; or a dense gradient given to an optimizer that takes only
    row-sparse ones (``optdsl.optim.SparseAdam``)."""


class NotAffineError(OptdslError, ValueError):
    """A step that is not affine in a hyper, asked for its derivative by that hyper (the
    kernel extra ``dlr:HYPER``; see :mod:`optdsl.affine`), or a hyper that cannot be
    differentiated by. The message says why, with the line and the operation; ``hyper``
    and ``line`` (None where no line is to blame) say it as data."""

    def __init__(self, message: str, *, hyper: str | None = None, line: int | None = None):
        super().__init__(message)
        self.hyper, self.line = hyper, line


class InternalCompilerError(Exception):
    """A bug in optdsl, not in the user's spec. Please report it."""
