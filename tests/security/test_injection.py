"""A ``.opt`` file, a hyper value or a string cannot inject code into what optdsl generates.

DESIGN.md: generated source "never contains user text other than validated identifiers and
re-rendered numbers". Strings travel as tuples of code points (``_text((109, ...))``) and
identifiers are re-checked and prefixed (``v_lr``), so these tests look for user text in
every generated source, and parse every generated source to check what its string
literals and comments are. The CuPy backend's modules also hold CUDA C++ in string
literals; those are checked line by line against what its template and renderer can emit.
"""

from __future__ import annotations

import ast
import functools
import io
import keyword
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest

import optdsl
from optdsl._resources import data_dir
from optdsl.api import make_class
from optdsl.backend import cupy_backend
from optdsl.backend import get as get_backend
from optdsl.compiler import load_spec
from optdsl.errors import NotAffineError
from optdsl.optim import STDLIB, load
from optdsl.render import buffer_ident

NUMPY = get_backend("numpy")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# The name of an extra kernel output (optdsl.extras): a fixed kind, a colon, an identifier.
EXTRA_BUFFER = re.compile(r"(?:(?:track|diag|dlr|state):[A-Za-z_][A-Za-z0-9_]*"
                          r"|(?:red|reduce):r[0-9]+|fac:e[0-9]+)\Z")
# Every extra output, asked of every kernel whose step is affine in lr.
EXTRAS = ("track", "update", "dlr:lr")


def with_extras(spec, backend, path):
    """The kernel of ``path`` with every extra output (without ∂p/∂lr where the step is
    not affine in lr, or the spec has no lr)."""
    try:
        return spec.kernel(backend, path, EXTRAS)
    except NotAffineError:
        return spec.kernel(backend, path, EXTRAS[:2])


def all_sources(spec) -> list[str]:
    """The host module and the NumPy kernel of every path of a compiled spec, without and
    with every extra output, with the kernels of their reduce stages."""
    kernels = [k for path in spec.paths()
               for k in (spec.kernel(NUMPY, path), with_extras(spec, NUMPY, path))]
    stages = [s.kernel.source for k in kernels for s in k.stages if s.kernel is not None]
    return [spec.host_source] + [k.source for k in kernels] + stages


def step_once(cls, **hypers) -> np.ndarray:
    w = optdsl.Param(np.linspace(-1, 1, 7).astype(np.float32), name="w")
    w.grad = np.full(7, 0.5, np.float32)
    opt = cls([w], **hypers)
    opt.step()
    opt.step()
    return w.data


@pytest.fixture(autouse=True)
def no_disk_cache(monkeypatch):
    monkeypatch.setenv("OPTDSL_CACHE_DIR", "off")


# --- names ----------------------------------------------------------------------------

def test_import_call_is_rejected():
    text = 'optimizer Evil\nupdate:\n    p = p - __import__("os") * g\n'
    with pytest.raises(optdsl.CheckError) as info:
        load_spec(text, "evil.opt")
    assert info.value.message == "unknown function '__import__'"


def test_attribute_chain_is_rejected_by_the_parser():
    text = 'optimizer Evil\nupdate:\n    x = __import__("os").system("true")\n    p = g\n'
    with pytest.raises(optdsl.ParseError) as info:
        load_spec(text, "evil.opt")
    assert info.value.message == "unexpected character '.'"


@pytest.mark.parametrize("name", ["__class__", "__builtins__", "__import__", "exec", "eval",
                                  "open", "globals", "getattr", "compile", "os", "sys"])
def test_python_names_are_unknown(name):
    read = f"optimizer Evil\nupdate:\n    p = p - {name} * g\n"
    with pytest.raises(optdsl.CheckError) as info:
        load_spec(read, "evil.opt")
    assert info.value.message == f"unknown name {name!r}"
    call = f"optimizer Evil\nupdate:\n    p = p - {name}(g)\n"
    with pytest.raises(optdsl.CheckError) as info:
        load_spec(call, "evil.opt")
    assert info.value.message == f"unknown function {name!r}"
    default = f"optimizer Evil\nhyper lr = {name}\nupdate:\n    p = p - lr * g\n"
    with pytest.raises(optdsl.CheckError) as info:
        load_spec(default, "evil.opt")
    assert info.value.message.startswith("a default must be a literal")


def test_user_names_cannot_capture_generated_names():
    """Hypers, states and locals named like the generated code's own variables are
    prefixed, so the spec computes exactly what the same spec with plain names does."""
    tricky = """optimizer Tricky
hyper h = 0.1
hyper _t = 2.0
hyper __builtins__ = 0.5
state f0 = 0
state b_p = 1

update:
    exec = h * _t
    _np = g * __builtins__
    args = exec * _np
    f0 = f0 + args
    b_p = b_p * 0.5
    kernel = f0 + b_p
    p = p - kernel
"""
    plain = tricky
    for old, new in [("__builtins__", "half"), ("_np", "gs"), ("_t", "two"), ("exec", "step"),
                     ("args", "delta"), ("kernel", "move"), ("b_p", "decay"), ("f0", "acc"),
                     ("h ", "lr "), ("h\n", "lr\n"), ("h*", "lr*")]:
        plain = plain.replace(old, new)
    assert "exec" not in plain and "hyper lr = 0.1" in plain
    got = step_once(make_class(load_spec(tricky, "tricky.opt")))
    want = step_once(make_class(load_spec(plain, "plain.opt")))
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(got, np.linspace(-1, 1, 7).astype(np.float32))


# --- strings --------------------------------------------------------------------------

PAYLOAD = "x'); import os; os.system('touch {marker}') #"
DOUBLE_PAYLOAD = 'y"); import os; os.system("touch {marker}") #'


def evil_spec(marker: Path) -> str:
    a = PAYLOAD.format(marker=marker)
    b = DOUBLE_PAYLOAD.format(marker=marker).replace('"', '\\"')
    return f'''optimizer Modal
"""A docstring with code: \'\'\'); import os; os.system('touch {marker}') #"""

hyper lr = 0.1
hyper mode = "{a}" in {{"{a}", "{b}", "safe"}}
hyper tag = "plain"

require mode != "{b}" or lr > 0, "\\"); os.system('touch {marker}') #"

update:
    if mode == "{a}":
        p = p - lr * g
        track args = (lr if tag == "{a}" else 2 * lr) * g
    elif mode == "{b}":
        p = p + lr * g
    elif tag == "{a}":
        p = p - 2 * lr * g
    else:
        p = p * 0.5
'''


def assert_inert(sources: list[str], marker: Path, *texts: str) -> None:
    for source in sources:
        for text in texts:
            assert text not in source
        assert str(marker) not in source
        assert "system" not in source and "import os" not in source
    assert not marker.exists()


def test_string_hypers_and_literals_never_reach_generated_code(tmp_path):
    marker = tmp_path / "pwned"
    text = evil_spec(marker)
    spec = load_spec(text, "modal.opt")
    a = PAYLOAD.format(marker=marker)
    b = DOUBLE_PAYLOAD.format(marker=marker)
    assert spec.hypers["mode"].default == a and b in spec.hypers["mode"].choices
    assert_inert(all_sources(spec), marker, a, b, a[:12], b[:12], "touch")

    Modal = make_class(spec)
    assert_inert([Modal.source("numpy"), Modal.source("numpy", mode=b),
                  Modal.source("numpy", mode="safe", tag=a)], marker, a, b, "touch")
    # The strings still mean what they say: each selects its own branch.
    before = np.linspace(-1, 1, 7).astype(np.float32)
    np.testing.assert_allclose(step_once(Modal), before - 2 * 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(step_once(Modal, mode=b), before + 2 * 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(step_once(Modal, mode="safe", tag=a),
                               before - 4 * 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(step_once(Modal, mode="safe"), before * 0.25)
    assert not marker.exists()


def test_malicious_constructor_value_is_inert(tmp_path):
    marker = tmp_path / "pwned"
    spec = load_spec(evil_spec(marker), "modal.opt")
    Modal = make_class(spec)
    evil = f"'); __import__('os').system('touch {marker}'); ('"
    data = step_once(Modal, mode="safe", tag=evil)
    np.testing.assert_allclose(data, np.linspace(-1, 1, 7).astype(np.float32) * 0.25)
    assert_inert([Modal.source("numpy", mode="safe", tag=evil)], marker, evil, "touch")
    with pytest.raises(optdsl.HyperError, match="invalid mode"):
        Modal([optdsl.Param(np.zeros(2, np.float32))], mode=evil)
    assert not marker.exists()


def test_string_with_escapes_and_unicode_round_trips(tmp_path):
    value = 'tab\\t quote\\" backslash\\\\ é 𝔭 \\u2028 end'
    text = (f'optimizer Esc\nhyper mode = "{value}"\nupdate:\n'
            f'    if mode == "{value}":\n        p = p - g\n')
    spec = load_spec(text, "esc.opt")
    decoded = spec.hypers["mode"].default
    assert decoded == 'tab\t quote" backslash\\ é 𝔭 \u2028 end'
    for source in all_sources(spec):
        assert "é" not in source and "𝔭" not in source and "quote" not in source
        assert source.isascii()
    np.testing.assert_allclose(step_once(make_class(spec)), np.linspace(-1, 1, 7) - 1.0,
                               rtol=1e-6)


# --- what generated code is made of ---------------------------------------------------

def template_comment_patterns(template: str = "numpy.py.j2") -> list[re.Pattern]:
    """The comment lines of a backend's template, with its placeholders as patterns."""
    holes = {"{{ version }}": r"[\w.+]+", "{{ kind }}": "(optimizer|schedule)",
             "{{ name }}": r"[A-Za-z_]\w*", "{{ path }}": r"\[[\d, ]*\]"}
    # "# line N: <statement>": the statement re-rendered from the tree (syntax.unparse):
    # names, numbers, fixed operators, and <string> where the spec had a string literal.
    token = r"(?:[A-Za-z_]\w*|\d[\w.+-]*|<string>|\*\*|[-+*/%<>=!]=?|[(),\[\]:]| )"
    patterns = [re.compile(rf"# line \d+(?:: {token}+)?")]
    for line in (data_dir("codegen") / template).read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            pattern = re.escape(line)
            for hole, sub in holes.items():
                pattern = pattern.replace(re.escape(hole), sub)
            patterns.append(re.compile(pattern))
    return patterns


COMMENTS = template_comment_patterns()
# (a scalar state and a reduction give the kernels' scalar_outputs and reduce stages)
PROBE = ("optimizer Probe\nhyper lr = 0.1\nstate k: scalar = 1\nupdate:\n"
         "    k = k * norm(g)\n    p = p - lr * k * g\n")


def _docstrings(tree: ast.AST) -> list[ast.Constant]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and \
                    isinstance(first.value.value, str):
                found.append(first.value)
    return found


def _fixed_docstrings() -> set[str]:
    spec = load_spec(PROBE, "probe.opt")
    return {d.value for s in all_sources(spec) for d in _docstrings(ast.parse(s))}


FIXED_DOCSTRINGS = _fixed_docstrings()
STDLIB_SPECS = {name: load(name)._spec for name in STDLIB}
EVIL = load_spec(evil_spec(Path("/nonexistent/pwned")), "modal.opt")


def check_generated(source: str, *, imports=(["numpy"], ["ops"]), fixed_docstrings=None,
                    comments=None, literals=None) -> None:
    """Only validated identifiers, numbers and template text: no string literal but an
    identifier, no import but ``imports``, no dunder attribute, only the template's
    comments and docstrings (the NumPy template's unless given). ``literals`` maps a
    module-level name to a check of the string (or each string of the tuple) assigned to
    it, instead of the identifier rule; every such name must be assigned."""
    fixed_docstrings = FIXED_DOCSTRINGS if fixed_docstrings is None else fixed_docstrings
    comments = COMMENTS if comments is None else comments
    literals = literals or {}
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    assert {d.value for d in docstrings} <= fixed_docstrings
    checked, assigned = set(), set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and node.targets[0].id in literals:
            name = node.targets[0].id
            values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for value in values:
                assert isinstance(value, ast.Constant) and isinstance(value.value, str), name
                literals[name](value.value)
                checked.add(id(value))
            assigned.add(name)
    assert assigned == set(literals), f"not assigned: {sorted(set(literals) - assigned)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                not any(node is d for d in docstrings) and id(node) not in checked:
            assert (IDENTIFIER.match(node.value) and not keyword.iskeyword(node.value)) \
                or EXTRA_BUFFER.match(node.value), \
                f"string literal {node.value!r} in generated code"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            assert names in imports, names
        if isinstance(node, ast.Attribute):
            assert not node.attr.startswith("__"), node.attr
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        assert tok.type != tokenize.ERRORTOKEN, tok
        if tok.type == tokenize.COMMENT:
            assert any(p.fullmatch(tok.string) for p in comments), tok.string
    assert source.isascii()


@pytest.mark.parametrize("name", sorted(STDLIB_SPECS) + ["evil"])
def test_generated_sources_hold_only_identifiers_numbers_and_template_text(name):
    spec = EVIL if name == "evil" else STDLIB_SPECS[name]
    sources = all_sources(spec)
    assert len(sources) >= 2
    for source in sources:
        check_generated(source)


def test_the_checks_above_would_catch_a_leak():
    """The source checker is not vacuous: a literal or comment with user text fails it."""
    with pytest.raises(AssertionError, match="string literal"):
        check_generated("x = h['lr']\ny = 'os.system'\n")
    with pytest.raises(AssertionError):
        check_generated("x = 1  # touch /tmp/pwned\n")
    with pytest.raises(AssertionError):
        check_generated("import os\n")
    check_generated("BUFFERS = ('p', 'track:lr', 'dlr:lr', 'diag:update', )\n")
    for bad in ("track:os.system", "track:lr; x", "evil:lr", "track:"):
        with pytest.raises(AssertionError, match="string literal"):
            check_generated(f"BUFFERS = ('p', {bad!r}, )\n")


# --- the cupy backend: CUDA C++ in string literals ------------------------------------

# Rendering needs neither cupy nor a GPU, so these checks run everywhere: the backend
# object itself renders (get_backend("cupy") would ask for cupy to be installed).
CUPY = cupy_backend.CupyBackend()
CUPY_TEMPLATE = (data_dir("codegen") / "cupy.py.j2").read_text()
CUPY_COMMENTS = template_comment_patterns("cupy.py.j2")
CUPY_DOCSTRINGS = {d.value for d in _docstrings(ast.parse(
    load_spec(PROBE, "probe.opt").kernel(CUPY, ()).source))}


def _template_string(name: str) -> str:
    """The text of the template's ``NAME = r\"\"\"...\"\"\"`` literal."""
    return CUPY_TEMPLATE.split(f'\n{name} = r"""', 1)[1].split('"""', 1)[0]


# Fixed text: the preamble is rendered as the template holds it; the options are the
# template's tuple.
CUPY_PREAMBLE = _template_string("PREAMBLE")
CUPY_OPTIONS = ast.literal_eval(re.search(r"^OPTIONS = (.*)$", CUPY_TEMPLATE, re.M).group(1))

# What the renderer emits in a body line (cupy_backend.render): values xN, scalar
# arguments aN, constants cast to F (NumPy's repr of a float, maybe negated, or NaN and
# infinity from the preamble's helpers), each op a fixed C++ shape.
_ID = r"[A-Za-z_][A-Za-z0-9_]*"
_NUM = r"(?:[0-9]+\.[0-9]+(?:e[-+][0-9]+)?|[0-9]+e[-+][0-9]+)"
_CONST = (rf"\(\(F\)(?:{_NUM}|\(-{_NUM}\)|optdsl_nan\(\)|optdsl_inf\(\)|"
          r"\(-optdsl_inf\(\)\))\)")
_V = rf"(?:x[0-9]+|a[0-9]+|{_CONST}|true|false)"
_EXPR = "(?:" + "|".join([
    _V,  # copy
    rf"[-!]{_V}",
    rf"{_V} (?:[-+*/<>]|[<>=!]=|&&|\|\|) {_V}",
    rf"(?:optdsl_mod|optdsl_min|optdsl_max|pow)\({_V}, {_V}\)",
    rf"(?:sqrt|exp|log|fabs|optdsl_sign|floor|cos|sin|tanh)\({_V}\)",
    rf"\(\(F\)1\.0\) / sqrt\({_V}\)",  # rsqrt
    rf"{_V} \? {_V} : {_V}",
]) + ")"
# "// line N: <statement>": the statement re-rendered, made of the same tokens as the
# Python comments' (names, numbers, operators, brackets, <string>).
_TOKEN = (r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9][A-Za-z0-9_.+-]*|<string>|\*\*|[-+*/%<>=!]=?"
          r"|[(),\[\]:]| )")
# A buffer as the kernels name it: b_NAME, or bt_/bd_/bh_NAME for an extra output.
_BUF = rf"b[tdhrf]?_{_ID}"
_BODY = [
    rf"const F x[0-9]+ = \(F\)(?P<buffer>{_BUF});",
    rf"const (?:F|bool) x[0-9]+ = {_EXPR};",
    rf"(?P<output>{_BUF}) = \(T\)\({_V}\);",
    rf"// line [0-9]+(?:: {_TOKEN}+)?",
]
OPERATION_LINES = [re.compile(p) for p in ["", re.escape("// the step's results"), *_BODY]]
# The multi-tensor kernel: the template's fixed lines exactly, its lines with holes as
# patterns, and the body lines indented.
MULTI_LINES = [re.compile(re.escape(line)) for line in _template_string("MULTI").split("\n")
               if "{{" not in line and "{%" not in line]
MULTI_LINES += [re.compile(p) for p in [
    rf'extern "C" __global__ void (?P<kernel>{_ID})\(',
    r"    const long long\* __restrict__ table, const long long n_tensors"
    r"(?:, (?:S|bool) a[0-9]+)*\) \{",
    r"  const long long\* blocks = pointers \+ [0-9]+ \* n_tensors;",
    r"  const long long end = start \+ (?P<chunk>[0-9]+) < sizes\[t\] \? "
    r"start \+ (?P=chunk) : sizes\[t\];",
    rf"  (?:const )?T\* __restrict__ _raw_(?P<buffer>{_BUF}) = \((?:const )?T\*\)"
    r"pointers\[[0-9]+ \* n_tensors \+ t\];",
    rf"    (?:const )?T &(?P<buffer>{_BUF}) = _raw_(?P=buffer)\[i\];",
    *("    " + p for p in _BODY),
]]
_PARAM = re.compile(rf"T (?P<buffer>{_BUF})|(?:S|bool) a[0-9]+")


def check_cuda_lines(text: str, patterns: list[re.Pattern], names: dict[str, set]) -> None:
    """Every line of ``text`` is one of ``patterns``; each name a pattern captures is one
    of ``names[group]`` (the module's buffers, outputs, kernel name)."""
    for line in text.split("\n"):
        match = next((m for p in patterns if (m := p.fullmatch(line))), None)
        assert match is not None, f"CUDA line {line!r} is not one the cupy backend emits"
        for group, value in match.groupdict().items():
            if group in names:
                assert value in names[group], f"{group} {value!r} in CUDA line {line!r}"


def check_cuda_params(text: str, names: dict[str, set]) -> None:
    """``'T b_g, S a0, bool a1'``: buffers of the module, and numbered scalars."""
    for item in text.split(", ") if text else ():
        match = _PARAM.fullmatch(item)
        assert match is not None, f"parameter {item!r}"
        assert match["buffer"] is None or match["buffer"] in names["buffer"], item


def _check_fixed(expected, text: str) -> None:
    assert text in expected, f"{text[:60]!r} is not the template's"


def check_cupy_source(source: str) -> None:
    """The Python checks, with the CUDA strings checked line by line instead of as
    identifiers."""
    module = {node.targets[0].id: node.value for node in ast.parse(source).body
              if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    buffers = set(ast.literal_eval(module["BUFFERS"]))
    outputs = set(ast.literal_eval(module["OUTPUTS"])) & buffers
    # the names as the CUDA code spells them (b_p, bt_effective_lr)
    names = {"buffer": {buffer_ident(b, "b_") for b in buffers},
             "output": {buffer_ident(b, "b_") for b in outputs},
             "kernel": {ast.literal_eval(module["MULTI_NAME"])}}
    check_generated(source, fixed_docstrings=CUPY_DOCSTRINGS, comments=CUPY_COMMENTS,
                    literals={
                        "IN_PARAMS": functools.partial(check_cuda_params, names=names),
                        "OUT_PARAMS": functools.partial(check_cuda_params, names=names),
                        "OPTIONS": functools.partial(_check_fixed, CUPY_OPTIONS),
                        "PREAMBLE": functools.partial(_check_fixed, (CUPY_PREAMBLE,)),
                        "OPERATION": functools.partial(check_cuda_lines,
                                                       patterns=OPERATION_LINES, names=names),
                        "MULTI": functools.partial(check_cuda_lines, patterns=MULTI_LINES,
                                                   names=names),
                    })


def cupy_sources(spec) -> list[str]:
    return [k.source for path in spec.paths()
            for k in (spec.kernel(CUPY, path), with_extras(spec, CUPY, path))]


def test_cupy_template_literals_are_fixed_text():
    """The preamble and options the checks compare with hold no template holes."""
    assert "{{" not in CUPY_PREAMBLE and "{%" not in CUPY_PREAMBLE
    assert "optdsl_mod" in CUPY_PREAMBLE
    assert CUPY_OPTIONS == ("--fmad=false",)
    assert len(MULTI_LINES) > len(_BODY) + 8  # the template's fixed kernel lines are there


@pytest.mark.parametrize("name", sorted(STDLIB_SPECS) + ["evil"])
def test_cupy_sources_hold_only_identifiers_numbers_and_template_text(name):
    spec = EVIL if name == "evil" else STDLIB_SPECS[name]
    sources = cupy_sources(spec)
    assert len(sources) >= 2
    for source in sources:
        check_cupy_source(source)
        assert "ElementwiseKernel" in source and "const F x" in source


def test_string_hypers_and_literals_never_reach_cupy_code(tmp_path):
    marker = tmp_path / "pwned"
    spec = load_spec(evil_spec(marker), "modal.opt")
    a = PAYLOAD.format(marker=marker)
    b = DOUBLE_PAYLOAD.format(marker=marker)
    sources = cupy_sources(spec)
    assert len(sources) == 2 * len(spec.paths()) >= 8
    assert_inert(sources, marker, a, b, a[:12], b[:12], "touch")
    for source in sources:
        check_cupy_source(source)


def _adam_cupy_source() -> str:
    return STDLIB_SPECS["Adam"].kernel(CUPY, STDLIB_SPECS["Adam"].paths()[-1]).source


@pytest.mark.parametrize(("old", "new"), [
    # code in the body, the kernel or the preamble
    ("// the step's results", '// the step\'s results\nsystem("touch /tmp/pwned");'),
    ("  for (long long i", '  system("touch /tmp/pwned");\n  for (long long i'),
    ("// F: the math type", '#include "/etc/passwd"\n// F: the math type'),
    # user text in a comment, or a comment continued onto the next line
    ("// line 26: exp_avg", '// line 26: "touch /tmp/pwned" exp_avg'),
    ("// line 26: exp_avg = b1 * exp_avg + (1 - b1) * g",
     "// line 26: exp_avg = b1 * exp_avg + (1 - b1) * g \\"),
    # a name that is not a buffer, or a store to one the kernel only reads
    ("const F x1 = (F)b_g;", "const F x1 = (F)b_pwned;"),
    ("b_p = (T)(", "b_g = (T)("),
    ("IN_PARAMS = 'T b_g, ", "IN_PARAMS = 'T b_g, S a0); system(x); (S a9, "),
    ("OPTIONS = ('--fmad=false', )", "OPTIONS = ('--fmad=false', '-I/tmp/pwned', )"),
    ("extern \"C\" __global__ void optdsl_Adam", "extern \"C\" __global__ void pwned_Adam"),
])
def test_the_cuda_checks_would_catch_a_leak(old, new):
    """The CUDA checker is not vacuous: the real source passes, and each of these edits
    (a line of code, user text, a name that is not the module's) fails it."""
    source = _adam_cupy_source()
    check_cupy_source(source)
    assert source.count(old) >= 1
    with pytest.raises(AssertionError):
        check_cupy_source(source.replace(old, new))
