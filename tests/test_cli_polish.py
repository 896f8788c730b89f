"""The command line's polish: every command's --help has examples, the exit statuses are
documented and kept, docs/cli.md's examples run as shown, and colour only on a terminal."""

from __future__ import annotations

import argparse
import io
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from doc_blocks import output_pattern

from optdsl import cli
from optdsl.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, build_parser, main

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "cli.md"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every subcommand, found in the parser itself, so a new one is covered here too."""
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


SUBCOMMANDS = sorted(_subcommands())


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")


def _run(argv: list[str]) -> tuple[int, str]:
    """Run the command line in this process: its exit status, and stdout and stderr
    together, in the order they were written."""
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse: --help, --version and usage errors
            status = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    return status, out.getvalue()


# --- --help ----------------------------------------------------------------------------

def test_the_subcommands_are_found():
    assert {"compile", "check", "list", "show", "plot-schedule", "demo"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help_with_examples(name):
    status, text = _run([name, "--help"])
    assert status == EXIT_OK
    assert re.search(r"^examples?:$", text, re.M | re.I), text
    assert re.search(rf"^  optdsl {re.escape(name)}\b", text, re.M), \
        f"`optdsl {name} --help` shows no example of `optdsl {name}`"


def test_top_level_help_documents_the_exit_statuses():
    status, text = _run(["--help"])
    assert status == EXIT_OK
    statuses = text.split("exit status:", 1)[1]
    for code in (EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED):
        assert re.search(rf"^  {code} +\w", statuses, re.M), code
    assert "NO_COLOR" in text and "FORCE_COLOR" in text
    assert (EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED) == (0, 1, 2, 130)


def _help_examples(parser: argparse.ArgumentParser) -> list[str]:
    return [line.strip() for line in (parser.epilog or "").splitlines()
            if line.startswith("  optdsl ")]


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_docs_list_every_subcommand_with_its_help_examples():
    text = DOC.read_text()
    documented = {_squash(line[2:]) for line in text.splitlines() if line.startswith("$ ")}
    for name, parser in _subcommands().items():
        assert f"\n## optdsl {name}\n" in text, f"docs/cli.md has no section for {name}"
        for example in _help_examples(parser):
            assert _squash(example) in documented, \
                f"`optdsl {name} --help` shows `{example}`; add it to docs/cli.md"
    for code in (EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED):
        assert f"\n| {code} | " in text


# --- docs/cli.md's examples, run as written --------------------------------------------

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def _doc_files() -> dict[str, str]:
    """The files the examples use: the page's opt blocks whose first line names them."""
    files = {}
    for lang, body in FENCE.findall(DOC.read_text()):
        first = body.split("\n", 1)[0]
        if lang == "opt" and re.fullmatch(r"# [\w.]+\.opt", first):
            files[first[2:]] = body
    return files


def _doc_commands() -> list[tuple[str, list[str]]]:
    """Each ``$ optdsl ...`` line of a console block not marked ``<!-- not run: ... -->``,
    with the output lines shown under it."""
    text = DOC.read_text()
    commands = []
    for match in FENCE.finditer(text):
        lang, body = match.groups()
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if lang != "console" or before.startswith("<!-- not run:"):
            continue
        for chunk in re.split(r"^(?=\$ )", body, flags=re.M):
            if chunk.strip():
                command, *output = chunk.rstrip("\n").split("\n")
                commands.append((command, output))
    return commands


DOC_COMMANDS = _doc_commands()


def test_the_docs_have_runnable_examples_of_most_commands():
    run = {shlex.split(c, comments=True)[2] for c, _ in DOC_COMMANDS}
    assert {"compile", "check", "list", "show", "plot-schedule", "demo"} <= run
    assert len(_doc_files()) == 2


@pytest.mark.parametrize(("command", "shown"), DOC_COMMANDS, ids=[c for c, _ in DOC_COMMANDS])
def test_documented_command_runs_as_shown(command, shown, tmp_path, monkeypatch):
    words = shlex.split(command, comments=True)
    assert words[:2] == ["$", "optdsl"], command
    if "numba" in words:
        pytest.importorskip("numba", reason="the numba backend is the extra `numba`")
    status_note = re.search(r"# exits (\d+)", command)
    expected = int(status_note.group(1)) if status_note else EXIT_OK
    for name, text in _doc_files().items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)

    status, output = _run(words[2:])
    assert status == expected, output
    if shown:
        assert output_pattern(shown).fullmatch(output.rstrip("\n") + "\n"), output


# --- exit statuses ---------------------------------------------------------------------

def test_exit_statuses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.opt").write_text("optimizer Good\nupdate:\n    p = p - 0.1 * g\n")
    (tmp_path / "bad.opt").write_text("optimizer Bad\nupdate:\n    p = p - lr * g\n")
    assert _run(["check", "good.opt"])[0] == EXIT_OK
    assert _run(["check", "good.opt", "bad.opt"])[0] == EXIT_FAILURE
    assert _run(["check", "missing.opt"])[0] == EXIT_FAILURE
    assert _run(["compile", "bad.opt"])[0] == EXIT_FAILURE
    assert _run(["plot-schedule", "Adam", "--print"])[0] == EXIT_FAILURE
    assert _run(["no-such-command"])[0] == EXIT_USAGE
    assert _run(["check"])[0] == EXIT_USAGE
    assert _run(["list", "--no-such-option"])[0] == EXIT_USAGE


def test_ctrl_c_exits_130_without_a_traceback(monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_list", interrupted)
    status, output = _run(["list"])
    assert status == EXIT_INTERRUPTED
    assert output == "optdsl: interrupted\n"


# --- colour ----------------------------------------------------------------------------

class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


# two mistakes, so every diagnostic is coloured, not just the first
BROKEN = "optimizer Broken\nhyper lr = 0.1\nupdate:\n    p = p - lr * gg\n    p = p - bta1\n"


def _check_broken(tmp_path, monkeypatch, stream_type) -> tuple[int, str, str]:
    (tmp_path / "broken.opt").write_text(BROKEN)
    (tmp_path / "good.opt").write_text("optimizer Good\nupdate:\n    p = p - 0.1 * g\n")
    monkeypatch.chdir(tmp_path)
    out, err = stream_type(), stream_type()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    status = main(["check", "good.opt", "broken.opt"])
    return status, out.getvalue(), err.getvalue()


def test_errors_are_coloured_on_a_terminal(tmp_path, monkeypatch):
    status, out, err = _check_broken(tmp_path, monkeypatch, FakeTTY)
    assert status == EXIT_FAILURE
    assert out == "good.opt: \x1b[32mok\x1b[0m\n"
    assert "\x1b[1mbroken.opt:4:18\x1b[0m: \x1b[1;31munknown name 'gg'" in err
    assert "\x1b[1mbroken.opt:5:13\x1b[0m: \x1b[1;31munknown name 'bta1'" in err
    assert "\n                     \x1b[1;32m^^\x1b[0m\n" in err  # the caret, not its indent
    _, plain_out, plain_err = _check_broken(tmp_path, monkeypatch, io.StringIO)
    assert ANSI.sub("", err) == plain_err and ANSI.sub("", out) == plain_out


def test_no_colour_into_a_pipe_or_a_file(tmp_path, monkeypatch):
    status, out, err = _check_broken(tmp_path, monkeypatch, io.StringIO)
    assert status == EXIT_FAILURE
    assert "\x1b" not in out + err
    assert out == "good.opt: ok\n"
    assert err.startswith("broken.opt:4:18: unknown name 'gg'")


@pytest.mark.parametrize(("env", "stream_type", "coloured"), [
    ({"NO_COLOR": "1"}, FakeTTY, False),
    ({"FORCE_COLOR": "1"}, io.StringIO, True),
    ({"NO_COLOR": "1", "FORCE_COLOR": "1"}, FakeTTY, False),  # NO_COLOR wins
    ({"NO_COLOR": ""}, FakeTTY, True),  # an empty value is no request
    ({"TERM": "dumb"}, FakeTTY, False),
    ({"TERM": "dumb", "FORCE_COLOR": "1"}, io.StringIO, True),
])
def test_colour_follows_no_color_and_force_color(env, stream_type, coloured, tmp_path,
                                                 monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _, out, err = _check_broken(tmp_path, monkeypatch, stream_type)
    assert ("\x1b[" in err) is coloured and ("\x1b[" in out) is coloured


def test_other_errors_are_coloured_on_a_terminal_only(monkeypatch):
    for stream_type, want in ((FakeTTY, "optdsl: \x1b[1;31merror:\x1b[0m "),
                              (io.StringIO, "optdsl: error: ")):
        err = stream_type()
        monkeypatch.setattr("sys.stderr", err)
        assert main(["show", "missing.opt"]) == EXIT_FAILURE
        assert err.getvalue().startswith(want + "missing.opt: no such file")


def test_a_closed_or_odd_stream_takes_no_colour():
    closed = io.StringIO()
    closed.close()
    assert not cli.use_colour(closed)
    assert not cli.use_colour(object())
