"""Where the package's data directories are: inside the wheel, or at the top of a checkout."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def data_dir(name: str) -> Path:
    """The directory ``grammars``, ``stdlib``, ``codegen`` or ``examples`` (in the wheel,
    only the files ``optdsl demo`` runs).

    A wheel carries them in ``optdsl/_data/`` (pyproject's force-include); a checkout has
    them beside the package.
    """
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"optdsl data directory {name!r} is missing from the installation")
