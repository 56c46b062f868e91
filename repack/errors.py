"""The project's exceptions: every failure a user can meet is one of these.

Each carries a one-line message (what failed, the value, what was expected)
and a hint (what to do).  ``repack.cli`` prints both and maps the class to an
exit code from its one table; the library never prints and never picks a code.
"""

from __future__ import annotations


class RepackError(Exception):
    """Base class.  ``str(err)`` is the one-line message.

    Besides the message and the hint, an error may carry structured fields for machines (``--json``)
    and for the CLI's wording: the ``value`` that was wrong, what was ``expected``, the HTTP ``status``,
    and the ``path`` and ``line`` of the file it concerns; ``setting`` names the caller's input it
    concerns (a field of the caller's settings, such as ``build_number``), so that the CLI can name
    its own option.  The library never names a command-line option in a message or hint: what to do
    is said in words, and only the CLI knows its flags.
    """

    hint: str = ""

    def __init__(self, message: str, hint: str = "", *, value: object = None, expected: object = None,
                 status: int | None = None, path: str | None = None, line: int | None = None,
                 setting: str | None = None) -> None:
        super().__init__(" ".join(message.split("\n")))
        if hint:
            self.hint = hint
        self.value, self.expected, self.status, self.path, self.line = value, expected, status, path, line
        self.setting = setting

    def fields(self) -> dict[str, object]:
        """The structured fields that are set, for ``--json``."""
        found = {"value": self.value, "expected": self.expected, "status": self.status,
                 "path": self.path, "line": self.line, "setting": self.setting}
        return {k: v if isinstance(v, (int, str)) else str(v) for k, v in found.items() if v is not None}


class InputError(RepackError):
    """A value the caller gave is malformed or names nothing usable: a version, a path, a URL, a config file.

    The caller can fix it without retrying anything; the CLI reports it as a usage error.
    """


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

    def __init__(self, message: str, hint: str = "", problems: tuple[str, ...] = (), *, value: object = None,
                 expected: object = None, path: str | None = None) -> None:
        super().__init__(message, hint, value=value, expected=expected, path=path)
        self.problems = tuple(problems)


class BuildError(RepackError):
    """An artifact could not be written."""


class LiveCheckError(RepackError):
    """The live check could not run flashinfer at all (no interpreter, a child that left no report)."""


class PublishError(RepackError):
    """A package could not be added to an index or channel."""
