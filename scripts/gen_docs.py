"""Write the parts of ``docs/`` that are program output, so that they cannot drift.

    python scripts/gen_docs.py            # rewrite them
    python scripts/gen_docs.py --check    # exit 1, naming the pages, if any is stale

Two kinds of page:

- **Pages with output regions** (:data:`OUTPUT_PAGES`, e.g. ``docs/pipeline.md``). Their
  Python blocks run in order, in one namespace. A block followed by an output region

      <!-- generated output (text): scripts/gen_docs.py writes this; do not edit -->
      ```text
      ...
      ```
      <!-- end of generated output -->

  gets what it printed written into that region (the fence takes the language in the
  marker). A block without a region must print nothing.
- **The API reference** (``docs/api.md``): written whole from the docstrings and
  signatures of the public names of :data:`MODULES`.
- **The optimizer catalogue** (``docs/catalogue.md``): written whole from the stdlib
  files, through ``optdsl.cli.catalogue`` (what ``optdsl list`` shows).

``tests/test_gen_docs.py`` regenerates both in memory and fails, with the command above,
when a page differs from what is committed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # optdsl from this checkout

DOCS = ROOT / "docs"
OUTPUT_PAGES = ("pipeline.md",)
API_PAGE = "api.md"
CATALOGUE_PAGE = "catalogue.md"

OUTPUT_START = re.compile(
    r"<!-- generated output \((?P<lang>[\w-]*)\): scripts/gen_docs.py writes this; "
    r"do not edit -->")
OUTPUT_END = "<!-- end of generated output -->"
FENCE = re.compile(r"^```([\w-]*)\s*$")


class DocError(Exception):
    """A page that cannot be generated as it is written."""


# --- pages with output regions -------------------------------------------------------------


def fenced_blocks(lines: list[str]) -> list[tuple[int, int, str]]:
    """(first line, closing fence line, language) of each fenced block, 0-based."""
    blocks, start, lang = [], None, ""
    for i, line in enumerate(lines):
        m = FENCE.match(line)
        if not m:
            continue
        if start is None:
            start, lang = i, m.group(1)
        elif m.group(1) == "":
            blocks.append((start, i, lang))
            start = None
    if start is not None:
        raise DocError(f"a fence opened on line {start + 1} is never closed")
    return blocks


def render_outputs(text: str, page: str) -> str:
    """``text`` with every output region holding what the Python block before it prints."""
    lines = text.split("\n")
    out: list[str] = []
    namespace: dict = {"__name__": f"docs.{page}"}
    pos = 0
    for start, end, lang in fenced_blocks(lines):
        if start < pos:  # a block inside a region just rewritten
            continue
        out.extend(lines[pos:end + 1])
        pos = end + 1
        if lang != "python":
            continue
        code = "\n".join(lines[start + 1:end]) + "\n"
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, f"{page} line {start + 2}", "exec"), namespace)  # noqa: S102
        # The region, if any, starts at the next non-blank line.
        nxt = pos
        while nxt < len(lines) and not lines[nxt].strip():
            nxt += 1
        marker = OUTPUT_START.fullmatch(lines[nxt]) if nxt < len(lines) else None
        if marker is None:
            if printed.getvalue():
                raise DocError(f"{page}: the block on line {start + 1} prints, but no output "
                               "region follows it")
            continue
        try:
            stop = lines.index(OUTPUT_END, nxt)
        except ValueError:
            raise DocError(f"{page}: the output region on line {nxt + 1} is never closed "
                           f"with {OUTPUT_END}") from None
        body = printed.getvalue()
        if not body:
            raise DocError(f"{page}: the block on line {start + 1} prints nothing for its "
                           "output region")
        out.extend(lines[pos:nxt])  # the blank lines
        out += [lines[nxt], f"```{marker['lang']}", *body.rstrip("\n").split("\n"), "```",
                OUTPUT_END]
        pos = stop + 1
    out.extend(lines[pos:])
    return "\n".join(out)


# --- the API reference ---------------------------------------------------------------------

# Each module, and the names it documents: None for its __all__.
MODULES: tuple[tuple[str, tuple[str, ...] | None, str], ...] = (
    ("optdsl", None, "compile specs, parameters, the optimizer base class, flat buffers, "
                     "clipping, checkpoints"),
    ("optdsl.optim", None, "the standard library's optimizers"),
    ("optdsl.schedules", None, "learning-rate schedules"),
    ("optdsl.torch", None, "optdsl in PyTorch: torch optimizers, state both ways"),
    ("optdsl.amp", None, "loss scaling for float16"),
    ("optdsl.diagnostics", ("Diagnostics", "ParamStats", "GroupStats", "TrackStats",
                            "Histogram", "JSONLLogger", "read_jsonl", "series",
                            "DiagnosticsError"),
     "what each step did"),
    ("optdsl.autotune", ("HypergradientLR",), "tuning a hyper online"),
    ("optdsl.distributed", ("AllReduce", "ShardedOptimizer", "consolidated_state_dict",
                            "TorchAllReduce", "NcclAllReduce", "DistributedError"),
     "data-parallel training over MPI, torch.distributed and NCCL"),
    ("optdsl.clip", ("clip_grad_norm_", "clip_grad_value_", "total_norm"),
     "gradient clipping"),
    ("optdsl.checkpoint", ("save", "load", "inspect", "LoadReport"), "checkpoint files"),
    ("optdsl.errors", (), "every error optdsl raises"),
)
# Listed under their own module (or under errors), not under optdsl's re-exports.
SUBMODULES = {"amp", "autotune", "diagnostics"}


def _is_error(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, BaseException)


class _Annotation:
    """An annotation kept as its source text (``from __future__ import annotations``), so
    a signature shows ``str | None`` and not ``'str | None'``."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _plain(sig: inspect.Signature) -> inspect.Signature:
    def ann(a):
        return _Annotation(a) if isinstance(a, str) else a

    params = [p.replace(annotation=ann(p.annotation)) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=ann(sig.return_annotation))


def signature(name: str, obj, drop_self: bool = False) -> str:
    """``name(...)`` with its parameters, or just ``name`` when it has none to show."""
    spec = getattr(obj, "_spec", None)
    if inspect.isclass(obj) and spec is not None:
        return _compiled_signature(name, obj)
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    if drop_self:
        params = list(sig.parameters.values())[1:]
        sig = sig.replace(parameters=params)
    text = f"{name}{_plain(sig)}"
    if re.search(r" at 0x[0-9a-f]+", text):
        raise DocError(f"the signature of {name} shows an address: {text}")
    return text


def _compiled_signature(name: str, cls) -> str:
    """A compiled class's constructor, with its spec's hypers where ``**hypers`` stands."""
    sig = inspect.signature(cls)
    P = inspect.Parameter
    hypers = [P(h, P.KEYWORD_ONLY, default=P.empty if info.required else info.default,
                annotation=info.describe().split(":", 1)[1].split()[0])  # float, tuple[2]
              for h, info in cls._spec.hypers.items()]
    # The hypers first, where a reader looks for them, then the runtime's own keywords.
    before = [p for p in sig.parameters.values()
              if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD, P.VAR_POSITIONAL)]
    after = [p for p in sig.parameters.values() if p.kind is P.KEYWORD_ONLY]
    params = before + hypers + after
    return f"{name}{_plain(sig.replace(parameters=params))}"


def _docstring(obj) -> str:
    doc = inspect.getdoc(obj)
    if inspect.isclass(obj) and doc in (inspect.getdoc(object), inspect.getdoc(Exception)):
        doc = None
    return doc or "(no docstring)"


def _doc_block(obj) -> list[str]:
    return ["```text", *_docstring(obj).split("\n"), "```", ""]


def _members(cls) -> list[tuple[str, object]]:
    """Public methods and properties that ``cls`` itself defines, in definition order."""
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            out.append((name, value))
    return out


def _entry(qualname: str, obj, level: str = "###") -> list[str]:
    if inspect.isclass(obj) or inspect.isroutine(obj):
        lines = [f"{level} `{qualname}`", "", f"`{signature(qualname, obj)}`", ""]
    else:
        lines = [f"{level} `{qualname}`", "", f"`{qualname} = {obj!r}`", ""]
        return lines
    lines += _doc_block(obj)
    if inspect.isclass(obj) and getattr(obj, "_spec", None) is None:
        for name, member in _members(obj):
            full = f"{qualname}.{name}"
            if isinstance(member, property):
                lines += [f"#### `{full}` (property)", "", *_doc_block(member)]
            else:
                raw = inspect.getattr_static(obj, name)
                drop = not isinstance(raw, staticmethod)
                lines += [f"#### `{full}`", "",
                          f"`{signature(full, member, drop_self=drop)}`", "",
                          *_doc_block(member)]
    return lines


def _names(module, names: tuple[str, ...] | None) -> list[str]:
    if names is not None:
        return list(names)
    return [n for n in module.__all__ if not n.startswith("__")]


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading (lower case, punctuation dropped, spaces to -)."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def render_api() -> str:
    """docs/api.md, from the docstrings and signatures of the modules' public names."""
    lines = [
        "# API reference",
        "",
        "<!-- Generated by scripts/gen_docs.py from the docstrings; do not edit. "
        "tests/test_gen_docs.py fails when it is out of date. -->",
        "",
        *textwrap.wrap(
            "Every public name of optdsl's modules, with its signature and docstring, as "
            "`python scripts/gen_docs.py` writes it from the code. The other pages explain "
            "how the pieces fit: start at [five-minutes.md](five-minutes.md) or "
            "[port-from-torch.md](port-from-torch.md); the `.opt` language is "
            "[language.md](language.md).", 90, break_on_hyphens=False),
        "",
    ]
    contents = []
    body: list[str] = []
    for modname, names, what in MODULES:
        module = importlib.import_module(modname)
        title = f"`{modname}`: {what}"
        contents.append(f"- [`{modname}`](#{_anchor(title)}): {what}")
        body += [f"## {title}", "", *_doc_block(module)]
        if modname == "optdsl.errors":
            body += _errors(module)
            continue
        for name in _names(module, names):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or (modname == "optdsl" and _is_error(obj)):
                continue
            body += _entry(f"{modname}.{name}", obj)
        if modname == "optdsl":
            errors = _anchor("`optdsl.errors`: every error optdsl raises")
            body += [*textwrap.wrap(
                f"The errors `optdsl` re-exports are listed under [`optdsl.errors`](#{errors})"
                "; `optdsl.amp`, `optdsl.autotune` and `optdsl.diagnostics` have sections of "
                "their own.", 90, break_on_hyphens=False), ""]
        if modname == "optdsl.torch":
            body += _torch_classes(module)
    return "\n".join(lines + contents + [""] + body).rstrip("\n") + "\n"


def _errors(module) -> list[str]:
    """The exception classes, as a tree by base class, then each one's docstring."""
    errors = [obj for name, obj in vars(module).items()
              if _is_error(obj) and obj.__module__ == module.__name__]
    lines = [*textwrap.wrap(
        "A mistake in what a user gives optdsl raises an `optdsl.OptdslError`, most of them "
        "also the built-in exception that kind of mistake calls for (`ValueError`, "
        "`TypeError`, `RuntimeError`), so code that catches those catches these too. A bug "
        "in optdsl itself raises `InternalCompilerError`, which is not an `OptdslError`. "
        "The classes by base, with the built-in bases in parentheses:", 90,
        break_on_hyphens=False), "", "```text"]

    def tree(cls, depth: int) -> None:
        builtin = [b.__name__ for b in cls.__bases__ if b.__module__ == "builtins"]
        extra = f" ({', '.join(builtin)})" if builtin and depth else ""
        lines.append("    " * depth + cls.__name__ + extra)
        for sub in errors:
            if cls in sub.__bases__:
                tree(sub, depth + 1)

    for root in errors:
        if not any(b in errors for b in root.__bases__):
            tree(root, 0)
    lines += ["```", ""]
    for cls in errors:
        lines += [f"### `optdsl.errors.{cls.__name__}`", "",
                  "Bases: " + ", ".join(f"`{b.__name__}`" for b in cls.__bases__), "",
                  *_doc_block(cls)]
    return lines


def _torch_classes(module) -> list[str]:
    """optdsl.torch's classes are made on first use (they need torch): named here."""
    names = ", ".join(f"`optdsl.torch.{n}`" for n in module.COUNTERPARTS)
    return [f"### {names}", "", *textwrap.wrap(
            "`from_rule(optdsl.optim.NAME)` for each of the stdlib optimizers torch.optim "
            "also has, made when first used (they need torch): `torch.optim.Optimizer` "
            "subclasses over torch tensors, taking torch.optim's keywords and defaults, "
            "`lr` second by position, and `flatten`, `backend`, `skip_nonfinite` and "
            "`max_grad_norm`. `optdsl.torch.TorchOptimizer` is their base class. See "
            "[torch.md](torch.md).", 90, break_on_hyphens=False), ""]


# --- the optimizer catalogue ---------------------------------------------------------------

REFERENCES = ("torch 2.13", "optax", "the paper")  # what optdsl.cli.catalogue() reports


def render_catalogue() -> str:
    """docs/catalogue.md: a row per stdlib optimizer, from its file and its docstring."""
    from optdsl.cli import catalogue

    entries = catalogue()
    longest = max(entries, key=lambda e: e.lines)
    counts = {ref: sum(e.reference == ref for e in entries) for ref in REFERENCES}
    lines = [
        "# The optimizer catalogue",
        "",
        "<!-- Generated by scripts/gen_docs.py from stdlib/*.opt; do not edit. "
        "tests/test_gen_docs.py fails when it is out of date. -->",
        "",
        *textwrap.wrap(
            f"Every optimizer of `optdsl.optim`: {len(entries)} `.opt` files in `stdlib/`, "
            f"{counts['torch 2.13']} with torch.optim's semantics, {counts['optax']} as "
            f"optax computes them and {counts['the paper']} as their papers state them. "
            "Each file's docstring names its paper and every deliberate difference from "
            "torch, optax or the paper; `optdsl show NAME` prints the file, and "
            "`optdsl list` this table with each optimizer's hypers.", 90,
            break_on_hyphens=False),
        "",
        *textwrap.wrap(
            "**State** is the bytes of state per float32 parameter with the default hypers "
            "(a conditional state, such as Adam's `max_exp_avg_sq` or Signum's "
            "`momentum_buffer`, counts only when the defaults enable it), plus 8 bytes per "
            "parameter tensor for each scalar state (NAdam's `mu_product`, a float64 kept "
            "on the host); Adafactor keeps a row and a column for a matrix instead. "
            "**Matches** is "
            "what the tests check each one against, every step for 40 or more steps in "
            "float64: torch.optim 2.13's trajectories for torch's optimizers, and NumPy "
            "transcriptions of optax's code or of the paper's algorithm, in "
            "`tests/stdlib/` (`references.py` and the files it imports), for the others.",
            90, break_on_hyphens=False),
        "",
        "| name | paper | lines of `.opt` | state (bytes / fp32 param) | matches |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for e in entries:
        lines.append(f"| [`{e.name}`](../stdlib/{e.file}) | {e.paper} | {e.lines} | "
                     f"{e.state} | {e.reference} |")
    lines += ["", f"The longest file is `stdlib/{longest.file}` ({longest.name}), "
                  f"{longest.lines} lines."]
    return "\n".join(lines) + "\n"


# --- the driver ----------------------------------------------------------------------------


def generate() -> dict[Path, str]:
    """Each generated page and its text as it should be."""
    pages = {DOCS / name: render_outputs((DOCS / name).read_text(), name)
             for name in OUTPUT_PAGES}
    pages[DOCS / API_PAGE] = render_api()
    pages[DOCS / CATALOGUE_PAGE] = render_catalogue()
    return pages


def stale() -> list[Path]:
    """The generated pages whose text on disk differs from what generate() gives."""
    return [path for path, text in generate().items()
            if not path.exists() or path.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a page is out of date")
    args = parser.parse_args(argv)
    pages = generate()
    changed = [p for p, text in pages.items() if not p.exists() or p.read_text() != text]
    for path in changed:
        rel = path.relative_to(ROOT)
        if args.check:
            print(f"{rel} is out of date; run: python scripts/gen_docs.py")
        else:
            path.write_text(pages[path])
            print(f"wrote {rel}")
    if not changed:
        print("docs up to date")
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    sys.exit(main())
