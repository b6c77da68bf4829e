"""The ``yolo_distill`` logger, one table formatter, and Ultralytics-style progress bars.

Library code never prints: it logs through :data:`LOGGER` (which has only a ``NullHandler``, so importing the
package adds nothing that prints). The CLI calls :func:`to_stdout` for itself; a Python user who wants the
messages configures logging as usual (``logging.basicConfig(level=logging.INFO)``) or calls :func:`to_stdout`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Any

LOGGER = logging.getLogger("yolo_distill")
LOGGER.addHandler(logging.NullHandler())


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time of each record (pytest and notebooks swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # the base class sets it once; we always follow sys.stdout
        pass


def to_stdout(verbose: bool | None = None) -> None:
    """Show ``yolo_distill`` messages on stdout, at INFO or (``verbose`` false) WARNING level; idempotent.

    Args:
        verbose: default: Ultralytics' own verbosity (``YOLO_VERBOSE``, true unless set otherwise).
    """
    if verbose is None:
        import os

        verbose = os.environ.get("YOLO_VERBOSE", "True").lower() == "true"
    if not any(isinstance(h, _StdoutHandler) for h in LOGGER.handlers):
        h = _StdoutHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(h)
    LOGGER.setLevel(logging.INFO if verbose else logging.WARNING)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], formats: Sequence[str] | None = None) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned.

    Args:
        rows: one sequence of cells per row.
        header: column titles.
        formats: a format spec per column (``",d"``, ``".4f"``, ``""``); a cell that is None shows as ``-``.
    """
    formats = list(formats or [""] * len(header))

    def cell(v: Any, f: str) -> str:
        if v is None:
            return "-"
        try:
            return format(v, f)
        except (TypeError, ValueError):
            return str(v)

    body = [[cell(v, f) for v, f in zip(r, formats)] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]
    lines = []
    for r in [list(header), *body]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def progress(items: Iterable, desc: str, total: int | None = None) -> Iterable:
    """Iterate ``items`` with Ultralytics' progress bar (``TQDM``), so a long loop shows where it is."""
    from ultralytics.utils import TQDM

    return TQDM(items, desc=desc, total=total)
