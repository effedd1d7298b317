"""One logging style for every process of a run (driver, Ray Data actors, Ray Train workers).

``get_logger("teacher")`` is the ``mdistill.teacher`` logger; its records print as
``[mdistill.teacher] message`` on stdout, which Ray forwards from its workers to the driver's
console and a job's log. The handler is installed once per process, on first use.
"""

from __future__ import annotations

import logging
import sys

_ROOT = "mdistill"


class _Stdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is now (pytest and Ray swap it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _) -> None:
        pass


def get_logger(name: str) -> logging.Logger:
    root = logging.getLogger(_ROOT)
    if not root.handlers:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # Ray and pytest configure the root logger their own way
    return logging.getLogger(f"{_ROOT}.{name}")
