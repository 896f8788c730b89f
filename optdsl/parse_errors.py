"""Parse errors a user can act on: bracket and string checks before parsing, and Lark's
exceptions translated into located :class:`~optdsl.errors.ParseError`s with hints.

No Lark exception or terminal name escapes from here.
"""

from __future__ import annotations

import re

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .errors import Diagnostic, ParseError, SourceFile, Span

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {")", "]", "}"}

# How terminals are named in "expected ..." messages. Terminals that start an expression
# or continue one are summarised as "an expression" and "an operator" (see _expected_hint).
_READABLE = {
    "COLON": "':'", "COMMA": "','", "EQUAL": "'='", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "LBRACE": "'{'", "RBRACE": "'}'", "NAME": "a name",
    "NUMBER": "a number", "STRING": "a string", "_NL": "end of line",
    "_INDENT": "an indented block", "_DEDENT": "end of block", "$END": "end of file",
    "HYPER": "'hyper'", "STATE": "'state'", "UPDATE": "'update:'", "REQUIRE": "'require'",
    "KIND": "'optimizer NAME'", "ELSE": "'else'", "TRACK": "'track'", "IN": "'in'",
    "AUGOP": "'+='",
    "INTERVAL_OPEN": "'[' or '('", "INTERVAL_CLOSE": "']' or ')'",
}
_EXPRESSION_START = {"NAME", "NUMBER", "STRING", "LPAR", "MINUS", "PLUS", "TRUE", "FALSE",
                     "NOT"}
_OPERATORS = {"ADD_OP", "MUL_OP", "COMPARE_OP", "AND", "OR"}  # and '**', anonymous
_DECLARATIONS = ("hyper", "state", "require")
_UPDATE_HEADER = re.compile(r"update\s*:\s*(#.*)?$")
# Words the grammar reserves in some places; the contextual lexer reads them as NAMEs
# elsewhere, so 'a - not b' fails at 'b' unless we look back at the 'not'.
KEYWORDS = {"if", "elif", "else", "not", "and", "or", "in", "pass", "track", "True", "False"}
# Python statements a user may reach for; optdsl has none of them.
_PYTHON_ONLY = {"return", "import", "from", "def", "class", "for", "while", "lambda",
                "with", "try", "del", "global", "assert", "raise", "yield", "print"}


def token_span(tok: Token) -> Span:
    return Span(tok.line, tok.column, tok.end_line, tok.end_column)


def error(source: SourceFile, span: Span, message: str, hint: str | None = None) -> ParseError:
    return ParseError(Diagnostic(source, span, message, hint))


def check_brackets(source: SourceFile) -> None:
    """Report an unclosed or unmatched bracket where it is, not at the end of the file."""
    stack: list[tuple[str, int, int]] = []
    text, i, line, col = source.text, 0, 1, 1
    while i < len(text):
        ch = text[i]
        if ch == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        if ch in "\"'":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else ch
            end = _string_end(text, i + len(quote), quote)
            if len(quote) == 1:
                stop = text.find("\n", i + 1)
                if end == -1 or (stop != -1 and stop < end):
                    raise error(source, Span(line, col, line, col + 1),
                                 "unterminated string", f"close it with {quote}")
            elif end == -1:
                raise error(source, Span(line, col, line, col + 3),
                             "unterminated docstring", f"close it with {quote}")
            chunk = text[i:end + len(quote)]
            newlines = chunk.count("\n")
            if newlines:
                line += newlines
                col = len(chunk) - chunk.rfind("\n")
            else:
                col += len(chunk)
            i = end + len(quote)
            continue
        if ch in _OPENERS:
            stack.append((ch, line, col))
        elif ch in _CLOSERS:
            if not stack:
                raise error(source, Span(line, col, line, col + 1), f"unmatched '{ch}'",
                             "remove it, or add the opening bracket")
            stack.pop()  # interval bounds like [0, 1) close with either kind
        if ch == "\n":
            line, col = line + 1, 1
        else:
            col += 1
        i += 1
    if stack:
        ch, l0, c0 = stack[-1]
        raise error(source, Span(l0, c0, l0, c0 + 1), f"'{ch}' was never closed",
                     f"add the matching '{_OPENERS[ch]}'")


def _string_end(text: str, i: int, quote: str) -> int:
    """Where the string whose body starts at ``i`` is closed by ``quote``, or -1.

    A backslash escapes the next character, as in the grammar's STRING terminal.
    """
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text.startswith(quote, i):
            return i
        else:
            i += 1
    return -1


def bad_dedent(text: str) -> tuple[int, int]:
    """The line whose indentation matches no open block, and the width of that indentation."""
    indents = [0]
    for number, raw in enumerate(text.split("\n"), 1):  # lines as Lark counts them
        stripped = raw.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        width = len(raw.expandtabs(8)) - len(stripped.expandtabs(8))
        if width > indents[-1]:
            indents.append(width)
        else:
            while indents and width < indents[-1]:
                indents.pop()
            if not indents or indents[-1] != width:
                return number, max(len(raw) - len(stripped), 1)
    return 1, 1


def translate(source: SourceFile, exc: UnexpectedInput) -> ParseError:
    line, col = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedCharacters):
        ch = source.text[exc.pos_in_stream] if exc.pos_in_stream < len(source.text) else "?"
        return error(source, Span(line, col, line, col + 1),
                      f"unexpected character {ch!r}", _character_hint(ch))
    if isinstance(exc, UnexpectedEOF):
        last = source.text.count("\n") or 1
        return error(source, Span(last, 1, last, 2), "unexpected end of file",
                      "is a block or an 'update:' section unfinished?")
    assert isinstance(exc, UnexpectedToken)
    token: Token = exc.token
    # What the parser could accept here. exc.expected is what the contextual lexer was
    # ready for, which is wrong where the parser needs an _INDENT (no lexer terminal).
    parser = exc.interactive_parser
    expected = set(parser.accepts()) if parser is not None else set(exc.expected)
    if token.type == "_INDENT":
        # The token starts at the end of the line before; the indentation is on the next.
        line = token.end_line
        return error(source, Span(line, 1, line, max(token.end_column, 2)),
                      "unexpected indent",
                      "only the body of 'update:', 'if', 'elif' and 'else' is indented")
    if "_INDENT" in expected:
        # _NL and _DEDENT tokens start on the line before the one that should be indented.
        line = token.end_line if token.type in ("_NL", "_DEDENT", "$END") else token.line
        line = min(line or 1, source.text.count("\n"))
        return error(source, Span(line, 1, line, 2), "expected an indented block",
                      _block_hint(source, line))
    if "KIND" in expected:
        span = Span(line, col, line, col + max(len(str(token)), 1))
        return error(source, span, "a spec starts with 'optimizer NAME'",
                      "write the header first, e.g. 'optimizer MyRule'")
    colon = "COLON" in expected and "EQUAL" not in expected  # a block header, not a hyper
    text = str(token)
    span = Span(line, col, line, col + max(len(text), 1))
    if token.type == "_NL":
        # The newline token starts at the end of the offending line.
        span = Span(token.line, token.column, token.line, token.column + 1)
    if colon and token.type not in ("$END", "_DEDENT"):
        return error(source, span, "expected ':'" if token.type == "_NL"
                      else f"unexpected {text!r}; expected ':'",
                      "a block header (update, if, elif, else) ends with ':'")
    previous = exc.token_history[-1] if exc.token_history else None
    misplaced = _misplaced_word(source, token, previous)
    if misplaced is not None:
        return misplaced
    if previous is not None and str(previous) in KEYWORDS:
        if token.type == "EQUAL":
            return error(source, token_span(previous), f"cannot assign to keyword '{previous}'",
                          "use a name that is not a keyword")
        if previous.type == "NAME":
            return keyword_error(source, previous)
    if token.type == "_NL":
        return error(source, span, "unexpected end of line", _expected_hint(expected))
    if token.type == "$END":
        last = source.text.count("\n") or 1
        return error(source, Span(last, 1, last, 2), "unexpected end of file",
                      _expected_hint(expected))
    if token.type == "_DEDENT":
        return error(source, Span(line, 1, line, 2), "unexpected end of block",
                      _expected_hint(expected))
    if token.type == "EQUAL" and source.line_text(line)[col - 2:col - 1] == "=":
        return error(source, Span(line, col - 1, line, col + 1),
                      "a comparison is not a statement",
                      "a statement assigns: 'name = expression'")
    if token.type == "EQUAL" and "COMPARE_OP" in expected:
        return error(source, span, "unexpected '='", "to compare, write '=='")
    if token.type == "COMMA" and "_NL" in expected:
        return error(source, span, "unexpected ','",
                      "write a tuple in parentheses, e.g. 'a, b = (x, y)'")
    if token.type == "EQUAL" and "_NL" in expected:
        return error(source, span, "unexpected '='",
                      "a statement assigns once: 'name = expression'; to compare, write '=='")
    if text == ":" and "_NL" in expected:
        return error(source, span, "unexpected ':'",
                      "only 'update', 'if', 'elif' and 'else' lines end with ':'")
    if token.type in ("NAME", "NUMBER", "STRING") and expected == {"_NL"}:
        return error(source, span, f"unexpected {text!r}; expected end of line",
                      "a block's body goes on the next lines, indented")
    return error(source, span, f"unexpected {text!r}", _expected_hint(expected))


def keyword_error(source: SourceFile, token: Token) -> ParseError:
    word = str(token)
    return error(source, token_span(token), f"'{word}' cannot be used here",
                  "after an operator, put it in parentheses: 'a == (not b)'" if word == "not"
                  else f"'{word}' is a keyword, not a name")


def _misplaced_word(source: SourceFile, token: Token, previous: Token | None
                    ) -> ParseError | None:
    """A statement that starts with a word that cannot start one: 'else' without an 'if',
    'return', a declaration after 'update:'. It is the cause only if the parser failed at
    that word or right after it."""
    for tok in (token, previous):
        if tok is None or not tok.line:
            continue
        text = source.line_text(tok.line)
        if tok.column != len(text) - len(text.lstrip()) + 1:
            continue  # not the first word of its line
        word, span = str(tok), token_span(tok)
        if word in ("else", "elif"):
            return error(source, span, f"'{word}' without a matching 'if'",
                          f"'{word}' follows an 'if' block at the same indentation")
        if word == "print":
            return error(source, span, "'print' is not part of optdsl",
                          "to see a value, record it with 'track NAME = EXPR'")
        if word in _PYTHON_ONLY:
            return error(source, span, f"'{word}' is not part of optdsl",
                          "an update block holds assignments, 'if' blocks and 'pass'")
        after_update = any(_UPDATE_HEADER.match(source.line_text(n))
                           for n in range(1, tok.line))
        if word in _DECLARATIONS and after_update:
            return error(source, span, f"'{word}' must come before 'update:'",
                          "declarations (hyper, state, require) come first, then 'update:'")
        if word == "update" and after_update:
            return error(source, span, "a second 'update:' block",
                          "a spec has one 'update:' block")
    return None


def _block_hint(source: SourceFile, line: int) -> str:
    """Which header the missing block belongs to: the nearest line above ending with ':'."""
    for n in range(min(line, source.text.count("\n")), 0, -1):
        text = source.line_text(n).split("#", 1)[0].rstrip()
        if text.endswith(":"):
            word = text.split()[0].rstrip(":")
            return f"indent the body of the '{word}' on line {n}"
        if text and n < line:
            break
    return "indent the body of the 'update:', 'if', 'elif' or 'else' line above"


def _character_hint(ch: str) -> str:
    if ch == ".":
        return "optdsl values have no attributes or methods"
    if not ch.isprintable():
        return "an invisible or control character; delete it"
    if not ch.isascii():
        return "names and operators are ASCII: letters, digits and '_'"
    return "the operators are + - * / % ** < <= > >= == != and or not"


def _terminal_text(name: str) -> str | None:
    if name in _READABLE:
        return _READABLE[name]
    if name.startswith("__ANON"):  # an anonymous literal such as '**'
        from .frontend import _parser  # the parser that raised; built by now

        pattern = _parser().get_terminal(name).pattern
        return repr(pattern.value) if pattern.type == "str" else None
    return None


def _expected_hint(expected: set[str]) -> str | None:
    """``expected an expression``, ``expected an operator, ',' or ')'``, and the like."""
    names = []
    if {"NAME", "NUMBER"} <= expected:
        names.append("an expression")
        expected = expected - _EXPRESSION_START
    operators = {t for t in expected if t in _OPERATORS or _terminal_text(t) == "'**'"}
    if operators:
        names.append("an operator")
        # After a complete operand, calls, indexing and 'x if c else y' are noise.
        expected = expected - operators - {"LPAR", "LSQB", "IF"}
    names += sorted({_terminal_text(t) for t in expected} - {None})
    if not names:
        return None
    if len(names) == 1:
        return "expected " + names[0]
    return "expected " + ", ".join(names[:-1]) + " or " + names[-1]
