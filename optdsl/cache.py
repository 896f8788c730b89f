"""The kernel cache: generated source in memory and on disk.

Keys hash everything that determines the generated text: the spec, the path, the
backend, optdsl's version and the source of the compiler itself (templates, passes,
renderers), so a changed compiler never reads a stale kernel. Files are written to a temp
file in the cache directory, fsynced and renamed into place, so two processes writing the
same entry at once both leave a whole, identical file. Each file opens with a header line
naming its key and the SHA-256 of the rest; a file whose header does not match is ignored
and rewritten, never executed.

The directory is ``$OPTDSL_CACHE_DIR``, else ``$XDG_CACHE_HOME/optdsl``, else
``~/.cache/optdsl``. ``OPTDSL_CACHE_DIR=off`` turns the disk cache off.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

from ._resources import data_dir

_MEMORY: dict[str, str] = {}
_HEADER = "# optdsl-cache-key: "


def cache_dir() -> Path | None:
    env = os.environ.get("OPTDSL_CACHE_DIR")
    if env is not None:
        if env.strip().lower() in ("", "0", "off", "none"):
            return None
        return Path(env).expanduser()  # "~/..." from a file no shell expanded
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "optdsl"


@cache
def compiler_fingerprint() -> str:
    """A hash of the code that generates kernels: templates and compiler modules."""
    h = hashlib.sha256()
    package = Path(__file__).resolve().parent
    files = sorted(data_dir("codegen").glob("*.j2"))
    files += sorted(package.glob("*.py")) + sorted((package / "passes").glob("*.py"))
    files += sorted((package / "backend").glob("*.py"))
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def key(*parts: str) -> str:
    h = hashlib.sha256(compiler_fingerprint().encode())
    for part in parts:
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:32]


def get_or_create(k: str, create: Callable[[], str]) -> str:
    """The source cached under ``k``, creating (and storing) it on a miss."""
    if k in _MEMORY:
        return _MEMORY[k]
    directory = cache_dir()
    path = directory / f"{k}.py" if directory else None
    if path is not None:
        try:
            head, sep, body = path.read_text(encoding="utf-8").partition("\n")
            # The header names the key and the body's digest: a file for another key, or
            # one whose body was damaged after it was written, is a miss, never executed.
            if sep and head == _header(k, body):
                _MEMORY[k] = body
                return body
        except (OSError, UnicodeDecodeError):
            pass
    text = create()
    _MEMORY[k] = text
    if path is not None:
        write_atomically(path, _header(k, text) + "\n" + text)
    return text


def _header(k: str, body: str) -> str:
    return f"{_HEADER}{k} sha256:{hashlib.sha256(body.encode()).hexdigest()}"


def write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # an unwritable cache costs speed, never correctness


def clear_memory() -> None:
    _MEMORY.clear()
