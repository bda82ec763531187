"""The one error type for bad input: it always names the file or array at fault; and the failure
of a run whose files each failed with such an error."""

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


class NamedFailure(RuntimeError):
    """A run that stopped after failures each already reported in one line naming its file (e.g.
    source files that could not be stored): like :class:`InputError`, shown without a traceback."""
