"""The ``optdsl`` command line: compile, check, list, show, demo."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .errors import OptdslError, SpecError


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
            print(exc, file=sys.stderr)
            failed += 1
        except OSError as exc:
            print(f"{name}: {exc.strerror}", file=sys.stderr)
            failed += 1
        else:
            print(f"{name}: ok")
    return 1 if failed else 0


def cmd_list(args) -> int:
    from . import optim, schedules
    from .api import state_bytes_per_param

    print("optimizers (optdsl.optim)")
    for name in optim.STDLIB:
        spec = optim.load(name)._spec
        nbytes = state_bytes_per_param(spec)
        print(f"{name}  ({optim.STDLIB[name]}; {nbytes} state bytes per fp32 parameter "
              "with defaults)")
        for info in spec.hypers.values():
            print(f"    {info.describe()}")
    print("\nschedules (optdsl.schedules)")
    for name in schedules.STDLIB:
        spec = schedules.load(name)._spec
        print(f"{name}  ({schedules.STDLIB[name]})")
        for info in spec.hypers.values():
            print(f"    {info.describe()}")
    return 0


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
    print(f"{rule}\nkernel ({args.backend})\n{rule}")
    print(spec.kernel(get_backend(args.backend), path).source, end="")
    return 0


def cmd_demo(args) -> int:
    from .demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="optdsl", description="Compile and run optimizer "
                                     "update rules written in .opt files.")
    parser.add_argument("--version", action="version", version=f"optdsl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", help="compile a .opt file (or stdlib name)")
    p.add_argument("file")
    p.add_argument("--backend", default="numpy")
    p.add_argument("-o", "--output", help="write a self-contained importable module")
    p.add_argument("--emit", choices=("source", "ir", "ir-unoptimized", "host"),
                   default="source", help="what to print (default: the kernel source)")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("check", help="check .opt files; non-zero exit on errors")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("list", help="list the stdlib optimizers and schedules")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="print a spec, its IR and its kernel")
    p.add_argument("name", help="a stdlib optimizer or schedule name, or a .opt path")
    p.add_argument("--backend", default="numpy")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("demo", help="train a small model with a stdlib or .opt optimizer")
    p.add_argument("--optimizer", default="Adam", help="stdlib name or .opt path")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OptdslError as exc:
        print(f"optdsl: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `optdsl show Adam | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
