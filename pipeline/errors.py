"""The one error type for bad input: it always names the file or array at fault."""

from __future__ import annotations

import os


class InputError(ValueError):
    """Input data that cannot be used, with the file (or array) it came from.

    ``str(err)`` reads ``"<where>: <what is wrong>"`` so that a CLI can print it as one line.
    """

    def __init__(self, where: str | os.PathLike, problem: str):
        self.where = os.fspath(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")

    def about(self, source: str | os.PathLike) -> str:
        """The problem as said of ``source``: alone when it is ``source``'s own, else prefixed
        with the file at fault (a recording's labels sidecar, a header-referenced data file)."""
        if os.path.abspath(self.where) == os.path.abspath(os.fspath(source)):
            return self.problem
        return str(self)
