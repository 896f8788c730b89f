"""A hypothesis strategy for random, well-typed optimizer update rules as ``.opt`` text.

The generator keeps the same model of scopes and types as the checker (host / elementwise,
number / boolean; names defined on every path through an ``if``; conditional states used
only under their condition), so every rule it draws must compile. A rule the checker
rejects is a bug in this file, unless the checker is wrong.

Expressions are fully parenthesised, so operator precedence is never what is tested here.
Domains are guarded most of the time (``sqrt(abs(x) + 1)``, ``(abs(x) + 1) ** e``), so
results are mostly finite numbers; NaN and inf can still appear, and the comparisons use
``equal_nan``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

HOST, TENSOR = "host", "tensor"
FLOAT, BOOL = "float", "bool"

# Literals as they are written in the source: zero, one, halves, tiny and big numbers.
LITERALS = ("0", "1", "0.5", "2", "1e-8", "0.1", "3", "0.0", "1.5e2", ".25", "0.999", "10")
FLOAT_HYPERS = ("lr", "h1", "h2")
BOOL_HYPERS = ("flag", "flag2")
MODE_CHOICES = ("a", "1.0")  # "1.0" once shared a lowering cache key with 1.0


@dataclass
class Rule:
    """A drawn rule: its text and what a test needs to pick hyper values for it."""

    text: str
    float_hypers: tuple[str, ...]
    bool_hypers: tuple[str, ...]
    has_pair: bool
    has_mode: bool
    states: tuple[str, ...]

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        return f"Rule(<<<\n{self.text}>>>)"


@dataclass
class _Scope:
    # name -> (kind, elem) of every local that is defined on every path to here
    locals: dict[str, tuple[str, str]] = field(default_factory=dict)
    facts: frozenset = frozenset()  # bool hypers known to be true here

    def copy(self) -> _Scope:
        return _Scope(dict(self.locals), self.facts)


# Elementwise ops whose result may differ by a few ulp between backends (C library vs
# NumPy's own SIMD code); ``rules(exact=True)`` keeps them out of elementwise code.
INEXACT_FUNCS = ("exp", "log", "cos", "sin", "tanh")


class _Gen:
    def __init__(self, draw, float_hypers, bool_hypers, has_pair, has_mode, states,
                 exact=False):
        self.draw = draw
        self.exact = exact  # no pow or INEXACT_FUNCS on elementwise values
        self.float_hypers = float_hypers
        self.bool_hypers = bool_hypers
        self.has_pair = has_pair
        self.has_mode = has_mode
        self.states = states  # name -> condition hyper or None
        self.elem_of: dict[str, str] = {}  # a local keeps one elem for its whole life
        self.n_locals = 0
        self.ifs_left = 4  # at most 4**4 = 256 specialisations
        self.scope = _Scope()
        self.lines: list[str] = []

    # --- helpers ----------------------------------------------------------------------
    def pick(self, options):
        return self.draw(st.sampled_from(list(options)))

    def coin(self, p: float = 0.5) -> bool:
        return self.draw(st.integers(0, 999)) < p * 1000

    def readable_states(self) -> list[str]:
        return [s for s, cond in self.states.items() if cond is None or cond in self.scope.facts]

    def host_float_leaves(self) -> list[str]:
        out = list(self.float_hypers) + ["t", "pi", "t", "inf" if self.coin(0.1) else "pi"]
        if self.has_pair:
            out += ["b1", "b2", "pair[0]", "pair[1]"]
        out += [n for n, (k, e) in self.scope.locals.items() if k == HOST and e == FLOAT]
        return out

    def tensor_float_leaves(self) -> list[str]:
        out = ["p", "g"] + self.readable_states()
        out += [n for n, (k, e) in self.scope.locals.items() if k == TENSOR and e == FLOAT]
        return out

    # --- expressions ------------------------------------------------------------------
    def expr(self, kind: str, elem: str, depth: int) -> str:
        """An expression of exactly ``kind`` (HOST/TENSOR) and ``elem`` (FLOAT/BOOL)."""
        return self.floating(kind, depth) if elem == FLOAT else self.boolean(kind, depth)

    def split(self, kind: str, n: int) -> list[str]:
        """Kinds for ``n`` operands whose join is ``kind``."""
        if kind == HOST:
            return [HOST] * n
        kinds = [self.pick((HOST, TENSOR)) for _ in range(n)]
        kinds[self.draw(st.integers(0, n - 1))] = TENSOR
        return kinds

    def floating(self, kind: str, depth: int) -> str:
        if depth <= 0 or self.coin(0.25):
            return self.float_leaf(kind)
        d = depth - 1
        inexact = self.exact and kind == TENSOR
        choice = self.pick(("arith", "arith", "arith", "div", "mod", "neg", "func", "func",
                            "func", "minmax", "clip", "where", "ifexp")
                           + (() if inexact else ("pow",)))
        if choice == "arith":
            a, b = self.split(kind, 2)
            op = self.pick(("+", "-", "*"))
            return f"({self.floating(a, d)} {op} {self.floating(b, d)})"
        if choice == "div":
            a, b = self.split(kind, 2)
            den = self.floating(b, d)
            if self.coin(0.8):
                den = f"(abs({den}) + {self.pick(('1', '1e-8', '0.5'))})"
            return f"({self.floating(a, d)} / {den})"
        if choice == "mod":  # np.remainder: the sign of the divisor, fmod's exactness
            a, b = self.split(kind, 2)
            den = self.floating(b, d)
            if self.coin(0.7):
                den = f"(abs({den}) + {self.pick(('1', '0.5'))})"
            return f"({self.floating(a, d)} % {den})"
        if choice == "pow":
            a, b = self.split(kind, 2)
            if self.coin(0.5):  # any base, a whole exponent
                base = self.floating(a, d)
                exp = self.pick(("2", "3", "0", "1", "-1", "-2")) if b == HOST or a == TENSOR \
                    else None
                if exp is not None:
                    return f"({base} ** {exp})"
            base = f"(abs({self.floating(a, d)}) + {self.pick(('1', '0.5'))})"
            exp = self.floating(b, d)
            if self.coin(0.7):
                exp = f"tanh({exp})" if self.coin(0.5) else f"clip({exp}, -3, 3)"
            return f"({base} ** {exp})"
        if choice == "neg":
            return f"(-{self.floating(kind, d)})"
        if choice == "func":
            x = self.floating(kind, d)
            f = self.pick(("sqrt", "rsqrt", "abs", "sign", "floor")
                          + (() if inexact else INEXACT_FUNCS))
            if f in ("sqrt", "rsqrt"):
                if self.coin(0.85):
                    return f"{f}(abs({x}) + {self.pick(('1', '1e-8', '0.5'))})"
                return f"{f}({x})"
            if f == "log":
                if self.coin(0.85):
                    return f"log(abs({x}) + {self.pick(('1', '1e-8'))})"
                return f"log({x})"
            if f == "exp":
                if self.coin(0.85):
                    return f"exp(clip({x}, -20, 20))" if self.coin(0.5) else f"exp(tanh({x}))"
                return f"exp({x})"
            return f"{f}({x})"
        if choice == "minmax":
            n = self.pick((2, 2, 3))
            args = ", ".join(self.floating(k, d) for k in self.split(kind, n))
            return f"{self.pick(('min', 'max'))}({args})"
        if choice == "clip":
            x, lo, hi = self.split(kind, 3)
            return f"clip({self.floating(x, d)}, {self.floating(lo, d)}, {self.floating(hi, d)})"
        if choice == "where":
            c, a, b = self.split(kind, 3)
            return f"where({self.boolean(c, d)}, {self.floating(a, d)}, {self.floating(b, d)})"
        # a host-conditioned choice: `a if c else b`; the test may also be a host number
        a, b = self.split(kind, 2)
        test = self.boolean(HOST, d) if self.coin(0.8) else self.floating(HOST, d)
        return f"({self.floating(a, d)} if {test} else {self.floating(b, d)})"

    def float_leaf(self, kind: str) -> str:
        if kind == TENSOR:
            return self.pick(self.tensor_float_leaves())
        if self.coin(0.5):
            lit = self.pick(LITERALS)
            return f"(-{lit})" if self.coin(0.2) else lit
        return self.pick(self.host_float_leaves())

    def boolean(self, kind: str, depth: int) -> str:
        leaves = [n for n, (k, e) in self.scope.locals.items() if k == kind and e == BOOL]
        if kind == HOST:
            leaves += list(self.bool_hypers)
        if leaves and (depth <= 0 or self.coin(0.3)):
            return self.pick(leaves)
        if depth <= 0 and kind == HOST and self.coin(0.3):
            return self.pick(("True", "False"))
        d = max(depth - 1, 0)
        choice = self.pick(("cmp", "cmp", "cmp", "chain", "not", "andor")
                           + (("mode",) if self.has_mode and kind == HOST else ()))
        if choice == "mode":
            return f"(mode {self.pick(('==', '!='))} {self.pick(MODE_CHOICES)!r})"
        if choice in ("cmp", "chain") or depth <= 0:
            n = 3 if choice == "chain" else 2
            ops = [self.pick(("<", "<=", ">", ">=", "==", "!=")) for _ in range(n - 1)]
            operands = [self.floating(k, min(d, 1)) for k in self.split(kind, n)]
            text = operands[0]
            for op, o in zip(ops, operands[1:], strict=True):
                text += f" {op} {o}"
            return f"({text})"
        if choice == "not":
            return f"(not {self.boolean(kind, d)})"
        a, b = self.split(kind, 2)
        return f"({self.boolean(a, d)} {self.pick(('and', 'or'))} {self.boolean(b, d)})"

    def host_condition(self) -> str:
        """The condition of a host ``if``: flags, t, hyper and host-local tests."""
        options = [f"t > {self.pick(('1', '2', '3'))}", f"t == {self.pick(('1', '2'))}",
                   "t <= 2"]
        options += list(self.bool_hypers) + [f"not {b}" for b in self.bool_hypers]
        if self.float_hypers:
            options.append(f"{self.pick(self.float_hypers)} > {self.pick(('0', '0.5', '1e-3'))}")
        if self.has_mode:
            options.append(f"mode == {self.pick(MODE_CHOICES)!r}")
        if self.coin(0.25):
            return self.boolean(HOST, 2) if self.coin(0.8) else self.floating(HOST, 1)
        return self.pick(options)

    # --- statements -------------------------------------------------------------------
    def emit(self, indent: str, text: str) -> None:
        self.lines.append(indent + text)

    def float_targets(self) -> list[str]:
        """Names that can be assigned a number (and keep a meaning): p, g, states, locals."""
        return ["p", "g"] + self.readable_states() + [
            n for n, e in self.elem_of.items() if e == FLOAT]

    def kind_of(self, name: str) -> str | None:
        if name in ("p", "g") or name in self.states:
            return TENSOR
        if name in self.scope.locals:
            return self.scope.locals[name][0]
        return None  # not readable here

    def assign(self, indent: str, depth: int) -> None:
        choice = self.pick(("tensor", "tensor", "local", "local", "aug", "swap"))
        d = self.draw(st.integers(1, 3))
        if choice == "tensor":
            target = self.pick(self.float_targets()[:2 + len(self.readable_states())])
            self.emit(indent, f"{target} = {self.floating(TENSOR, d)}")
            return
        if choice == "local":
            reuse = [n for n in self.elem_of if self.coin(0.3)]
            if reuse:
                name = reuse[0]
                elem = self.elem_of[name]
            else:
                name = f"x{self.n_locals}"
                self.n_locals += 1
                elem = FLOAT if self.coin(0.8) else BOOL
                self.elem_of[name] = elem
            kind = self.pick((HOST, TENSOR))
            self.emit(indent, f"{name} = {self.expr(kind, elem, d)}")
            self.scope.locals[name] = (kind, elem)
            return
        if choice == "aug":
            readable = [n for n in self.float_targets() if self.kind_of(n) is not None]
            name = self.pick(readable)
            kind = self.kind_of(name)
            value_kind = self.pick((HOST, TENSOR))
            if kind == HOST and value_kind == TENSOR:
                kind = TENSOR
            op = self.pick(("+=", "-=", "*=", "/="))
            value = self.floating(value_kind, d)
            if op == "/=" and self.coin(0.8):
                value = f"(abs({value}) + 1)"
            self.emit(indent, f"{name} {op} {value}")
            if name in self.scope.locals:
                self.scope.locals[name] = (kind, FLOAT)
            return
        # swap or rotate two or three readable numbers: `a, b = b, a`. p, g and states
        # must stay elementwise, so a host local may only rotate into another local.
        readable = [n for n in self.float_targets() if self.kind_of(n) is not None]
        names = list(dict.fromkeys(self.draw(st.lists(st.sampled_from(readable), min_size=2,
                                                       max_size=3))))
        for values in (names[1:] + names[:1], names[-1:] + names[:-1]):
            if len(names) > 1 and all(self.kind_of(v) == TENSOR or n in self.elem_of
                                      for n, v in zip(names, values, strict=True)):
                break
        else:
            self.emit(indent, f"p = {self.floating(TENSOR, 1)}")
            return
        kinds = {v: self.kind_of(v) for v in values}
        self.emit(indent, f"{', '.join(names)} = ({', '.join(values)})")
        for n, v in zip(names, values, strict=True):
            if n in self.elem_of:
                self.scope.locals[n] = (kinds[v], FLOAT)

    def if_stmt(self, indent: str, depth: int) -> None:
        before = self.scope.copy()
        outcomes: list[_Scope] = []
        n_branches = self.pick((1, 1, 2, 3))
        for i in range(n_branches):
            self.scope = before.copy()
            cond = self.host_condition()
            self.emit(indent, f"{'if' if i == 0 else 'elif'} {cond}:")
            if cond in self.bool_hypers:
                self.scope.facts = before.facts | {cond}
            self.block(indent + "    ", depth + 1, self.draw(st.integers(1, 2)))
            outcomes.append(self.scope)
        self.scope = before.copy()
        if n_branches == 1 and cond.startswith("not ") and cond[4:] in self.bool_hypers:
            self.scope.facts = before.facts | {cond[4:]}
        if self.coin(0.5):
            self.emit(indent, "else:")
            self.block(indent + "    ", depth + 1, self.draw(st.integers(1, 2)))
        outcomes.append(self.scope)
        merged = _Scope(facts=before.facts)
        for name in set.intersection(*(set(o.locals) for o in outcomes)):
            kinds = {o.locals[name][0] for o in outcomes}
            merged.locals[name] = (TENSOR if TENSOR in kinds else HOST, self.elem_of[name])
        self.scope = merged

    def block(self, indent: str, depth: int, n: int) -> None:
        for _ in range(n):
            r = self.draw(st.integers(0, 9))
            if r < 2 and depth < 2 and self.ifs_left > 0:
                self.ifs_left -= 1
                self.if_stmt(indent, depth)
            elif r == 2 and depth > 0:
                self.emit(indent, "pass")
            else:
                self.assign(indent, depth)


@st.composite
def rules(draw, max_statements: int = 8, exact: bool = False) -> Rule:
    """A random optimizer ``R`` that the checker accepts; with ``exact``, its elementwise
    code uses only ops every backend computes bit for bit alike (no pow, exp, log, cos,
    sin, tanh: host code may still use them)."""
    float_hypers = tuple(FLOAT_HYPERS[:draw(st.integers(1, 3))])
    bool_hypers = tuple(BOOL_HYPERS[:draw(st.integers(0, 2))])
    has_pair = draw(st.booleans())
    has_mode = draw(st.integers(0, 3)) == 0
    n_states = draw(st.integers(0, 3))
    states: dict[str, str | None] = {}
    for k in range(n_states):
        cond = None
        if bool_hypers and draw(st.booleans()):
            cond = draw(st.sampled_from(bool_hypers))
        # one state has torch's name, to keep the swap in stdlib style readable
        states[("exp_avg", "exp_avg_sq", "buf")[k]] = cond

    lines = ["optimizer R", '"""A random rule drawn by tests/property/rules.py."""', ""]
    for h in float_hypers:
        default = draw(st.sampled_from(("1e-3", "0.5", "0.0", "2", "0.9", "-1")))
        lines.append(f"hyper {h} = {default}")
    for h in bool_hypers:
        lines.append(f"hyper {h} = {draw(st.sampled_from(('False', 'True')))}")
    if has_pair:
        lines.append("hyper pair = (0.9, 0.999)")
    if has_mode:
        lines.append('hyper mode = "a" in {"a", "1.0"}')
    lines.append("")
    for name, cond in states.items():
        init = draw(st.sampled_from(("0", "0.5", "p * 0", float_hypers[0], "abs(p) + 1")))
        lines.append(f"state {name} = {init}" + (f" if {cond}" if cond else ""))
    lines += ["", "update:"]

    gen = _Gen(draw, float_hypers, bool_hypers, has_pair, has_mode, states, exact)
    if has_pair:
        gen.emit("    ", "b1, b2 = pair")
    gen.block("    ", 0, draw(st.integers(1, max_statements)))
    lines += gen.lines
    return Rule("\n".join(lines) + "\n", float_hypers, bool_hypers, has_pair, has_mode,
                tuple(states))


@st.composite
def hyper_values(draw, rule: Rule) -> dict:
    """Keyword values for a rule's hypers (unset ones keep their defaults)."""
    values: dict = {}
    for h in rule.float_hypers:
        if draw(st.booleans()):
            values[h] = draw(st.sampled_from((0.0, 1e-3, 0.5, 0.9, 1.0, 2.0, -1.0, 1e-8)) |
                             st.floats(-4, 4, allow_nan=False, width=64))
    for h in rule.bool_hypers:
        values[h] = draw(st.booleans())
    if rule.has_pair and draw(st.booleans()):
        values["pair"] = (draw(st.floats(0, 1, exclude_max=True)),
                          draw(st.floats(0, 1, exclude_max=True)))
    if rule.has_mode:
        values["mode"] = draw(st.sampled_from(MODE_CHOICES))
    return values
