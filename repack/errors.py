"""The project's exceptions: every failure a user can meet is one of these.

Each carries a one-line message (what failed, the value, what was expected)
and a hint (what to do).  ``cli.py`` prints both and maps the class to an exit
code; the library never prints.
"""

from __future__ import annotations


class RepackError(Exception):
    """Base class.  ``str(err)`` is the one-line message."""

    hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(" ".join(message.split("\n")))
        if hint:
            self.hint = hint


class UsageError(RepackError):
    """The command line or its inputs make no sense (exit code 2)."""


class PlanError(RepackError):
    """A FlashInfer version is unknown, unaffected, or its code cannot be read."""


class UnknownVersionError(PlanError):
    """No flashinfer-python of that version exists where we looked."""


class NotNeededError(PlanError):
    """The version reads its headers from a shipped path: nothing to build."""


class FetchError(RepackError):
    """A transfer failed: unreachable host, HTTP error, reset, timeout, truncation."""


class SourceError(RepackError):
    """A source is malformed: not a zip, a member missing, a name that escapes."""


class IntegrityError(RepackError):
    """Bytes do not match the checksums that flashinfer pins.

    ``problems`` lists every mismatch found, not only the first.
    """

    def __init__(self, message: str, hint: str = "", problems: tuple[str, ...] = ()) -> None:
        super().__init__(message, hint)
        self.problems = tuple(problems)


class BuildError(RepackError):
    """An artifact could not be written."""


class LiveCheckError(RepackError):
    """The live check could not run flashinfer at all (no interpreter, a child that left no report)."""


class PublishError(RepackError):
    """A package could not be added to an index or channel."""
