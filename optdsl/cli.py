"""The ``optdsl`` command line: compile, check, list, show, plot-schedule, plot-diagnostics,
demo."""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from .errors import OptdslError, ScheduleError, SpecError

# The exit statuses, one meaning each (listed in `optdsl --help` and docs/cli.md).
EXIT_OK = 0  # done; for `check`, every file is clean
EXIT_FAILURE = 1  # a spec has errors, or the command could not do what was asked
EXIT_USAGE = 2  # the command line is wrong: argparse's own status
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports a killed command

# One line for each schedule written in Python (optdsl.schedules.PYTHON_SCHEDULES).
PYTHON_SCHEDULE_SUMMARY = {
    "LambdaLR": "lr = base_lr * lr_lambda(epoch), for a Python function lr_lambda",
    "MultiplicativeLR": "lr = lr * lr_lambda(epoch) at each step (not at construction)",
    "SequentialLR": "runs each schedule in turn, switching at the milestones; each "
                    "starts over from the base lr",
    "ChainedScheduler": "steps every schedule each step, in order: the factors of "
                        "recursive ones multiply",
}


def _load(target: str):
    """A CompiledSpec from a stdlib name (``Adam``) or a path to a ``.opt`` file."""
    from . import optim, schedules
    from .compiler import load_spec

    if target in optim.STDLIB:
        return optim.load(target)._spec
    if target in schedules.STDLIB:
        return schedules.load(target)._spec
    path = Path(target)
    if not path.is_file():
        names = ", ".join([*optim.STDLIB, *schedules.STDLIB])
        raise OptdslError(f"{target}: no such file, and not a stdlib optimizer or "
                          f"schedule ({names})")
    return load_spec(path.read_text(), str(path))


def _default_path(spec, t: int = 1):
    from .hypers import REQUIRED, resolve

    given = {n: 0.0 for n, h in spec.hypers.items() if h.default is REQUIRED}
    return spec.host["decide"](resolve(spec.hypers, given, spec.name), t)


def cmd_compile(args) -> int:
    from .backend import get as get_backend

    spec = _load(args.file)
    if spec.kind == "schedule":
        if args.output or args.emit not in ("source", "host"):
            raise OptdslError(f"{spec.name} is a schedule: it runs on the host and has no "
                              "kernel or IR; `optdsl compile` prints its host code")
        print(spec.host_source, end="")
        return 0
    if args.output:
        from .export import render_module

        text = render_module(spec, args.backend)
        out = Path(args.output)
        fd, tmp = tempfile.mkstemp(dir=out.parent if str(out.parent) else ".", suffix=".py")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, out)
        print(f"wrote {out} ({len(spec.paths())} kernels for {spec.name})")
        return 0
    path = _default_path(spec)
    if args.emit == "ir":
        print(spec.program(path))
    elif args.emit == "ir-unoptimized":
        print(spec.unoptimized(path))
    elif args.emit == "host":
        print(spec.host_source)
    else:
        print(spec.kernel(get_backend(args.backend), path).source, end="")
    return 0


def cmd_check(args) -> int:
    from .compiler import load_spec

    failed = 0
    for name in args.files:
        try:
            load_spec(Path(name).read_text(), name)
        except SpecError as exc:
            print(_spec_error_text(exc, sys.stderr), file=sys.stderr)
            failed += 1
        except OSError as exc:
            print(f"{name}: {exc.strerror}", file=sys.stderr)
            failed += 1
        else:
            print(f"{name}: {_paint('ok', 'ok', sys.stdout)}")
    return EXIT_FAILURE if failed else EXIT_OK


class CatalogueEntry(NamedTuple):
    """One stdlib optimizer, as `optdsl list` and docs/catalogue.md show it."""

    name: str
    file: str  # under stdlib/
    paper: str  # "Kingma & Ba, 2015": the docstring's first citation
    lines: int  # of the .opt file
    state_bytes: int  # per fp32 parameter; a conditional state counts if the defaults enable it
    reference: str  # what tests/stdlib checks it against: "torch 2.13", "optax", "the paper"
    scalar_bytes: int = 0  # per parameter tensor: 8 per scalar state (a float64 on the host)
    # of a parameter with 2 or more dimensions, when it differs: e.g. "4 (R + C) per R x C
    # matrix" (Adafactor's row and column states)
    matrix_state: str = ""

    @property
    def state(self) -> str:
        """``8``; with scalar states, ``4 + 8 per tensor``; with factored ones,
        ``4, or 4 (R + C) per R x C matrix``."""
        extra = f" + {self.scalar_bytes} per tensor" if self.scalar_bytes else ""
        matrix = f", or {self.matrix_state}" if self.matrix_state else ""
        return f"{self.state_bytes}{extra}{matrix}"


# The first parenthesis with a year in it: "Adam (Kingma & Ba, 2015), ..." -> Kingma & Ba, 2015
_CITATION = re.compile(r"\(([^()]*?\b(?:1[89]|20)\d\d\b[^()]*)\)")


def _reference(doc: str) -> str:
    """What a stdlib docstring says the file follows. Every stdlib docstring says it one
    of three ways: "with torch.optim.X's semantics", "as optax.x computes it" (or
    "following optax.x"), or "following the paper's ..."."""
    if re.search(r"torch\.optim\.\w+'s semantics", doc):
        return "torch 2.13"
    if re.search(r"\bas optax\.[\w.]+\s+computes|\bfollowing optax\.[\w.]+", doc):
        return "optax"
    return "the paper"


def catalogue() -> list[CatalogueEntry]:
    """The stdlib optimizers in ``optdsl.optim.STDLIB`` order, with what the catalogue
    shows of each."""
    from . import optim
    from ._resources import data_dir
    from .api import scalar_state_bytes, state_bytes_per_param

    entries = []
    for name, file in optim.STDLIB.items():
        spec = optim.load(name)._spec
        doc = " ".join(spec.spec.doc.split())
        cited = _CITATION.search(doc.split(". ", 1)[0])
        paper = cited.group(1) if cited else doc.split(". ", 1)[0]
        lines = len((data_dir("stdlib") / file).read_text().splitlines())
        entries.append(CatalogueEntry(name, file, paper, lines, state_bytes_per_param(spec),
                                      _reference(doc), scalar_state_bytes(spec),
                                      _matrix_state(spec)))
    return entries


def _matrix_state(spec) -> str:
    """What a spec with row and column states keeps for an R x C float32 matrix."""
    from .api import state_bytes_per_param

    if not spec.spec.factored:
        return ""
    rows = sum(d.kind == "row" for d in spec.spec.factored)
    cols = len(spec.spec.factored) - rows
    whole = state_bytes_per_param(spec, factored=True)
    parts = [f"{4 * rows} (R + C)" if rows == cols else f"{4 * rows} R + {4 * cols} C"]
    return " + ".join(([f"{whole}"] if whole else []) + parts) + " per R x C matrix"


def cmd_list(args) -> int:
    from . import optim, schedules

    print("optimizers (optdsl.optim)")
    for entry in catalogue():
        spec = optim.load(entry.name)._spec
        print(f"{entry.name}  ({entry.file}; {entry.state} state bytes per fp32 "
              "parameter with defaults)")
        citation = re.sub(r', "[^"]*"', "", entry.paper)  # the title is in docs/catalogue.md
        print(f"    {citation}; matches {entry.reference}; {entry.lines} lines of .opt")
        for info in spec.hypers.values():
            print(f"    {info.describe()}")
    print("\nschedules (optdsl.schedules)")
    for name in schedules.STDLIB:
        spec = schedules.load(name)._spec
        print(f"{name}  ({schedules.STDLIB[name]})")
        for info in spec.hypers.values():
            print(f"    {info.describe()}")
    print("\nschedules written in Python (optdsl.schedules; they take callables or other "
          "schedules)")
    for name in schedules.PYTHON_SCHEDULES:
        cls = getattr(schedules, name)
        print(f"{name}({_arguments(cls)})")
        print(f"    {PYTHON_SCHEDULE_SUMMARY.get(name) or _first_line(cls.__doc__)}")
    return 0


def _arguments(cls: type) -> str:
    """``optimizer, lr_lambda, last_epoch=-1``: a constructor's arguments, no annotations."""
    params = inspect.signature(cls).parameters.values()
    return ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                     for p in params)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0].replace("``", "")


def cmd_show(args) -> int:
    from .backend import get as get_backend

    spec = _load(args.name)
    rule = "-" * 78
    print(f"{rule}\nspec ({spec.filename})\n{rule}\n{spec.text.rstrip()}")
    if spec.kind == "schedule":
        print(f"{rule}\nhost code\n{rule}\n{spec.host_source}", end="")
        return 0
    path = _default_path(spec)
    print(f"{rule}\nIR after the passes (default hypers, t=1; path {path})\n{rule}")
    print(spec.program(path))
    kernel = spec.kernel(get_backend(args.backend), path)
    for i, stage in enumerate(kernel.stages, 1):  # a rule with reductions: optdsl.stages
        reduced = ", ".join(f"reduce:{r.key} = {r.kind}({r.source})" for r in stage.reductions)
        print(f"{rule}\nreduce pass {i} of {len(kernel.stages)} ({args.backend}): "
              f"{reduced}\n{rule}")
        print(stage.kernel.source if stage.kernel is not None
              else "(no kernel: it reduces buffers as they are loaded)\n", end="")
    update = "update kernel" if kernel.stages else "kernel"
    print(f"{rule}\n{update} ({args.backend})\n{rule}")
    print(kernel.source, end="")
    return 0


# --- plot-schedule ---------------------------------------------------------------------

def cmd_plot_schedule(args) -> int:
    from . import plot

    if args.all:
        if args.name or args.hypers or args.print:
            raise OptdslError("--all draws every stdlib schedule with the README's settings; "
                              "give no schedule, hypers or --print with it")
        if not args.output:
            raise OptdslError("--all needs -o FILE.png")
        _write(plot.plot_gallery, args.output)
        return 0
    if args.name is None:
        raise OptdslError("give a schedule (a stdlib name or a .opt path), or --all")
    if not args.output and not args.print:
        raise OptdslError("give -o FILE.png to draw the schedule, or --print to print it")
    cls = _schedule_class(args.name)
    hypers = _parse_hypers(args.hypers, cls._spec.hypers)
    reads_metric = "metric" in cls._spec.host["USED_BUILTINS"]
    if reads_metric and not args.metrics:
        raise OptdslError(f"{cls.__name__} reads a metric: give --metrics FILE, one number "
                          "per line (the value passed to step(metric) at each step)")
    if args.metrics and not reads_metric:
        raise OptdslError(f"{cls.__name__} reads no metric; leave out --metrics")
    metrics = _read_metrics(args.metrics) if args.metrics else None
    steps = args.steps or _default_steps(hypers, metrics)
    if metrics is not None and len(metrics) < steps - 1:
        raise OptdslError(f"{args.metrics} holds {len(metrics)} values; {steps} steps need "
                          f"{steps - 1}")
    from .schedules import preview

    try:
        values = preview(cls, steps, lr=args.lr, momentum=args.momentum, metrics=metrics,
                         **hypers)
    except ScheduleError as exc:  # e.g. OneCycleLR stepped past total_steps
        raise OptdslError(f"{exc}; show fewer --steps") from None
    show_momentum = plot.changes(values["momentum"])
    if args.print:
        print("step\tlr" + ("\tmomentum" if show_momentum else ""))
        for i, lr in enumerate(values["lr"]):
            extra = f"\t{float(values['momentum'][i])!r}" if show_momentum else ""
            print(f"{i}\t{float(lr)!r}{extra}")
    if args.output:
        title = f"{plot.describe(cls.__name__, hypers)}, base lr {args.lr!r}"
        _write(lambda path: plot.plot_schedule(values, title, path), args.output)
    return 0


def _write(draw, output: str) -> None:
    try:
        draw(output)
    except OSError as exc:
        raise OptdslError(f"cannot write {output}: {exc.strerror or exc}") from None
    print(f"wrote {output}", file=sys.stderr)


def _schedule_class(name: str) -> type:
    """A schedule class from a stdlib name or a ``.opt`` path, with errors that say which
    names exist."""
    from . import optim, schedules
    from .api import compile as compile_spec

    if name in schedules.STDLIB:
        return schedules.load(name)
    if name in schedules.PYTHON_SCHEDULES:
        raise OptdslError(f"{name} takes Python callables or other schedules, so it cannot be "
                          "built from the command line; in Python, sched.preview(steps) gives "
                          "its values")
    if name in optim.STDLIB:
        raise OptdslError(f"{name} is an optimizer, not a schedule")
    if not Path(name).is_file():
        raise OptdslError(f"unknown schedule {name!r}: not a stdlib schedule "
                          f"({', '.join(schedules.STDLIB)}) and no such .opt file")
    cls = compile_spec(Path(name))
    if cls._spec.kind != "schedule":
        raise OptdslError(f"{name} is an optimizer, not a schedule")
    return cls


def _parse_hypers(items: list[str], infos: dict) -> dict:
    """``["milestones=30,80", "gamma=0.5"]`` -> ``{"milestones": (30, 80), "gamma": 0.5}``.

    Values are Python literals read with ast.literal_eval (never eval): numbers,
    True/False, quoted strings, and comma lists for tuples; a bare word is a string
    (``anneal_strategy=linear``). The schedule itself checks names, types and ranges."""
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key.isidentifier() or not text:
            raise OptdslError(f"bad hyper {item!r}: write NAME=VALUE, e.g. gamma=0.5 or "
                              "milestones=30,80")
        if key in out:
            raise OptdslError(f"{key} is given twice")
        if key in ("lr", "momentum") and key not in infos:
            raise OptdslError(f"{key} is not a hyper of this schedule; the starting {key} "
                              f"is --{key}")
        info = infos.get(key)
        if info is not None and info.type == "bool" and text.lower() in ("true", "false"):
            text = text.capitalize()  # three_phase=true, as a shell user types it
        value = _literal(text, item)
        if info is not None and info.type == "tuple" and not isinstance(value, tuple):
            value = (value,)  # milestones=30
        elif info is not None and info.type != "tuple" and isinstance(value, tuple):
            raise OptdslError(f"bad hyper {item!r}: {key} takes one value, not a list")
        out[key] = value
    return out


def _literal(text: str, item: str):
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if any(c in text for c in "\"'()[]{},"):
            raise OptdslError(f"bad hyper {item!r}: cannot read {text!r}") from None
        return text  # a bare word: anneal_strategy=linear
    if isinstance(value, list):
        value = tuple(value)
    items = value if isinstance(value, tuple) else (value,)
    if not items or not all(isinstance(v, (bool, int, float, str)) for v in items):
        raise OptdslError(f"bad hyper {item!r}: a value is a number, True/False, a string, "
                          "or a comma list of numbers")
    return value


def _read_metrics(path: str) -> list[float]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise OptdslError(f"cannot read {path}: {exc.strerror or exc}") from None
    metrics = []
    for n, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            metrics.append(float(text))
        except ValueError:
            raise OptdslError(f"{path}:{n}: not a number: {text!r}") from None
    return metrics


def _default_steps(hypers: dict, metrics: list[float] | None) -> int:
    """One step per metric, else the schedule's own length where it has one
    (total_steps, or epochs * steps_per_epoch), else 100."""
    if metrics is not None:
        return len(metrics) + 1
    total = hypers.get("total_steps")
    if not isinstance(total, int) or total <= 0:
        epochs, per_epoch = hypers.get("epochs"), hypers.get("steps_per_epoch")
        total = epochs * per_epoch if isinstance(epochs, int) and isinstance(per_epoch, int) \
            else 0
    return total if total > 0 else 100


# --- plot-diagnostics ------------------------------------------------------------------

def cmd_plot_diagnostics(args) -> int:
    from . import plot
    from .diagnostics import read_jsonl

    records = read_jsonl(args.log)
    if not records:
        raise OptdslError(f"{args.log} holds no diagnostics records")
    _write(lambda path: plot.plot_diagnostics(records, path, group=args.group,
                                              source=args.log), args.output)
    return 0


def cmd_demo(args) -> int:
    from .demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="optdsl", formatter_class=raw,
        description="Compile and run optimizer update rules written in .opt files.",
        epilog="examples:\n"
        "  optdsl check my_rule.opt        # report the mistakes in a spec\n"
        "  optdsl show Adam                # a stdlib spec, its IR and its kernel\n"
        "  optdsl demo                     # train a small model\n\n"
        "exit status:\n"
        f"  {EXIT_OK:<4} success (check: every file is clean)\n"
        f"  {EXIT_FAILURE:<4} a spec has errors, or the command could not do what was asked\n"
        f"  {EXIT_USAGE:<4} the command line is wrong (an unknown option, a missing argument)\n"
        f"  {EXIT_INTERRUPTED:<4} interrupted (Ctrl-C)\n\n"
        "Errors are coloured when stderr is a terminal; NO_COLOR=1 turns colour off and\n"
        "FORCE_COLOR=1 turns it on anywhere. Each command's --help has examples;\n"
        "docs/cli.md has them all.")
    parser.add_argument("--version", action="version", version=f"optdsl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "compile", help="compile a .opt file (or stdlib name)", formatter_class=raw,
        description="Print what a spec compiles to: the kernel for its default hypers at "
        "step 1, its IR,\nor (for a schedule) its host code; or write a self-contained "
        "module with -o.",
        epilog="examples:\n"
        "  optdsl compile Adam                       # the NumPy kernel of stdlib Adam\n"
        "  optdsl compile my_rule.opt --emit ir      # the IR after the passes\n"
        "  optdsl compile Adam -o adam_kernels.py    # an importable module: no parsing at import")
    p.add_argument("file", help="a .opt path, or a stdlib optimizer or schedule name")
    p.add_argument("--backend", default="numpy",
                   help="the backend whose kernel to print or write (default numpy)")
    p.add_argument("-o", "--output", help="write a self-contained importable module")
    p.add_argument("--emit", choices=("source", "ir", "ir-unoptimized", "host"),
                   default="source", help="what to print (default: the kernel source)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser(
        "check", help="check .opt files; non-zero exit on errors", formatter_class=raw,
        description="Parse and check each file; print 'FILE: ok', or each mistake with its "
        "line and a caret.\nExits 1 if any file has a mistake.",
        epilog="examples:\n"
        "  optdsl check my_rule.opt\n"
        "  optdsl check my_rule.opt broken.opt       # exits 1: broken.opt has a mistake")
    p.add_argument("files", nargs="+", metavar="FILE", help="a .opt file")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "list", help="list the stdlib optimizers and schedules", formatter_class=raw,
        description="List the stdlib optimizers and schedules with their hypers and "
        "defaults.",
        epilog="example:\n"
        "  optdsl list")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "show", help="print a spec, its IR and its kernel", formatter_class=raw,
        description="Print a spec, then its IR after the passes and its kernel (default "
        "hypers, step 1);\nfor a schedule, its host code.",
        epilog="examples:\n"
        "  optdsl show Adam\n"
        "  optdsl show my_rule.opt --backend numba\n"
        "  optdsl show StepLR                        # a schedule: the spec and its host code")
    p.add_argument("name", help="a stdlib optimizer or schedule name, or a .opt path")
    p.add_argument("--backend", default="numpy",
                   help="the backend whose kernel to print (default numpy)")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "plot-schedule", help="draw (or print) the lr a schedule gives, step by step",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Draw the lr that a schedule gives over --steps steps, starting from "
        "--lr, and\nthe momentum in a second panel where the schedule changes it (from "
        "--momentum).",
        epilog="examples:\n"
        "  optdsl plot-schedule StepLR step_size=30 gamma=0.5 -o lr.png\n"
        "  optdsl plot-schedule MultiStepLR milestones=30,80 --steps 120 --print\n"
        "  optdsl plot-schedule OneCycleLR max_lr=0.1 total_steps=100 anneal_strategy=linear "
        "-o 1cycle.png\n"
        "  optdsl plot-schedule ReduceLROnPlateau patience=5 --metrics val_loss.txt -o lr.png\n"
        "  optdsl plot-schedule --all -o docs/schedules.png   # the README's figure\n\n"
        "Drawing needs matplotlib (pip install 'optdsl[plot]'); --print does not.")
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="a stdlib schedule name (optdsl list) or a .opt path")
    p.add_argument("hypers", nargs="*", metavar="KEY=VALUE",
                   help="the schedule's hypers: numbers, True/False, words or quoted "
                   "strings, comma lists for tuples (milestones=30,80)")
    p.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                   help="how many steps to show, counting the start (default: one per "
                   "--metrics value, else the schedule's total_steps, else 100)")
    p.add_argument("--lr", type=float, default=0.1, help="the base lr (default 0.1)")
    p.add_argument("--momentum", type=float, default=0.9,
                   help="the starting momentum, for schedules that cycle it (default 0.9)")
    p.add_argument("--metrics", metavar="FILE",
                   help="the metric given to step(metric) at each step, one number per line "
                   "(ReduceLROnPlateau)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the plot here (.png, .svg, .pdf)")
    p.add_argument("--print", action="store_true",
                   help="print the values, one line per step (needs no matplotlib)")
    p.add_argument("--all", action="store_true",
                   help="draw every stdlib schedule in one grid (the README's figure)")
    p.set_defaults(func=cmd_plot_schedule)

    p = sub.add_parser(
        "plot-diagnostics", help="draw a diagnostics log (optdsl.diagnostics.JSONLLogger)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Draw a diagnostics log written by optdsl.diagnostics.JSONLLogger (one "
        "JSON line per\nlogged step, from an optimizer built with diagnostics=True), in "
        "four panels over the\nsteps: each param group's gradient norm and update/param "
        "ratio, the mean of every\ntracked value with its min-max band, and a heat map of "
        "one group's gradient histograms.",
        epilog="example:\n"
        "  # in the training loop:\n"
        "  #   opt = Adam(params, lr=1e-3, diagnostics=True)\n"
        "  #   log = optdsl.diagnostics.JSONLLogger(\"runs/diag.jsonl\", every=10)\n"
        "  #   ... opt.step(); log.log(opt)\n"
        "  optdsl plot-diagnostics runs/diag.jsonl -o diag.png\n"
        "  optdsl plot-diagnostics runs/diag.jsonl --group 1 -o diag.svg\n\n"
        "Drawing needs matplotlib (pip install 'optdsl[plot]').")
    p.add_argument("log", metavar="LOG", help="a .jsonl diagnostics log")
    p.add_argument("-o", "--output", metavar="FILE", required=True,
                   help="write the plot here (.png, .svg, .pdf)")
    p.add_argument("--group", type=int, default=0, metavar="G",
                   help="the param group whose gradient histograms the heat map shows "
                   "(default 0)")
    p.set_defaults(func=cmd_plot_diagnostics)

    p = sub.add_parser(
        "demo", help="train a small MLP on handwritten digits with any optimizer",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a small NumPy MLP (examples/mlp.py, hand-written backprop) on "
        "handwritten digits:\nscikit-learn's digits set when scikit-learn is installed, "
        "else a generated one\n(the output says which). Prints the loss and test accuracy "
        "per epoch and draws the\nloss curves. Optimizers and schedules are stdlib names "
        "in any case, names of the\n.opt files in examples/ (lion), or .opt paths.",
        epilog="examples:\n"
        "  optdsl demo                                  # Adam, 20 epochs, writes demo.png\n"
        "  optdsl demo --optimizer sgd --lr 0.1 --epochs 30\n"
        "  optdsl demo --optimizer my_rule.opt --schedule CosineAnnealingLR\n"
        "  optdsl demo --schedule StepLR step_size=5 gamma=0.5\n"
        "  optdsl demo --compare adam,sgd,lion --plot docs/demo.png   # the README's figure\n"
        "  optdsl demo --small --quiet --no-plot        # a few seconds, for CI\n\n"
        "The real digits and the plot need the demo extra (pip install 'optdsl[demo]':\n"
        "scikit-learn, matplotlib); without them the demo trains on generated digits and\n"
        "draws nothing.")
    p.add_argument("--optimizer", metavar="NAME", default=None,
                   help="a stdlib optimizer (any case), an example (lion) or a .opt path "
                   "(default adam)")
    p.add_argument("--compare", metavar="A,B,...",
                   help="train each of these optimizers in turn and draw them in one plot, "
                   "e.g. adam,sgd,lion")
    p.add_argument("--lr", type=float, default=None,
                   help="the learning rate, for every optimizer (default: one tuned per "
                   "optimizer, else the spec's default)")
    p.add_argument("--schedule", nargs="+", metavar=("NAME", "KEY=VALUE"),
                   help="an lr schedule stepped once per epoch, with its hypers: stdlib name "
                   "(any case) or .opt path; T_max and total_steps default to the epochs")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs to train (default 20; 3 with --small)")
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="N",
                   help="examples per step (default 32)")
    p.add_argument("--hidden", type=_positive_int, default=64, metavar="N",
                   help="hidden units (default 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the weights, the train/test split and the batch order")
    p.add_argument("--dataset", choices=("auto", "sklearn", "generated"), default="auto",
                   help="auto: scikit-learn's digits if installed, else generated ones")
    p.add_argument("--plot", metavar="FILE", default="demo.png",
                   help="write the loss curves here (default demo.png; needs matplotlib)")
    p.add_argument("--no-plot", dest="plot", action="store_const", const=None,
                   help="draw nothing")
    p.add_argument("--small", action="store_true",
                   help="a tiny run (3 epochs) that checks everything works in seconds")
    p.add_argument("--quiet", action="store_true",
                   help="print only the final accuracies, not a line per epoch or the bar")
    p.set_defaults(func=cmd_demo)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


# --- colour ----------------------------------------------------------------------------

_STYLES = {"location": "1", "error": "1;31", "hint": "36", "caret": "1;32", "ok": "32"}


def use_colour(stream) -> bool:
    """Colour for a terminal only. NO_COLOR (no-color.org) turns it off; FORCE_COLOR turns it
    on for any stream (a CI log that renders it); TERM=dumb turns it off. The same order as
    Python 3.13's own tracebacks."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    if os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _paint(text: str, style: str, stream) -> str:
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m" if text and use_colour(stream) else text


def _spec_error_text(exc: SpecError, stream) -> str:
    """``str(exc)`` (each diagnostic's ``file:line:col: message; hint``, its source line
    and a caret line), coloured when ``stream`` takes colour."""
    if not use_colour(stream):
        return str(exc)
    out = []
    for d in exc.diagnostics:
        head, *rest = d.render().split("\n")
        location = f"{d.source.name}:{d.span.line}:{d.span.column}"
        if head == f"{location}: {d.message}" + (f"; {d.hint}" if d.hint else ""):
            head = f"{_paint(location, 'location', stream)}: {_paint(d.message, 'error', stream)}"
            if d.hint:
                head += f"; {_paint(d.hint, 'hint', stream)}"
        if len(rest) == 2:  # the source line and the caret line under it
            pad = rest[1].rstrip("^")
            rest[1] = pad + _paint(rest[1][len(pad):], "caret", stream)
        out.append("\n".join([head, *rest]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a nargs="*" positional at the first option, so in
    # `plot-schedule StepLR --steps 50 gamma=0.5` the hyper after the option is left over.
    if extra and getattr(args, "hypers", None) is not None \
            and not any(e.startswith("-") for e in extra):
        args.hypers += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except SpecError as exc:
        print(_spec_error_text(exc, sys.stderr), file=sys.stderr)
        return EXIT_FAILURE
    except OptdslError as exc:
        print(f"optdsl: {_paint('error:', 'error', sys.stderr)} {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("optdsl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `optdsl show Adam | head`
        sys.stderr.close()
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
