"""The command line: the only module that reads argv and the environment,
prints, and picks exit codes (one table, :data:`repack.cli.common.EXIT_CODES`,
printed by ``--help`` and the README).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from repack import __version__
from repack.cli.common import (
    EPILOG,
    EXIT_INTERRUPTED,
    EXIT_PIPE,
    EXIT_TABLE,
    EXIT_USAGE,
    _clear_progress,
    emit_json,
    exit_code_of,
    hint_of,
    verbose_option,
)
from repack.errors import InputError, RepackError

# -- entry point -------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    Parser.json_errors = "--json" in argv  # argparse errors come before any Namespace exists
    parser = build_parser()
    Parser.argv = argv
    _options_before_their_command(parser, argv)
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0) or 0)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # why: a SIGTERM (docker stop, CI cancel) must unwind like ^C, so that temporaries are removed
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a reader gone before the last block is a closed pipe too
        return code
    except KeyboardInterrupt:
        return _interrupted(args)
    except BrokenPipeError:
        return _closed_pipe()
    except RepackError as exc:
        return report_error(args, exc)
    except OSError as exc:  # the filesystem said no where no module expected it: still one line
        logging.getLogger("repack.cli").debug("unexpected OSError", exc_info=True)  # -v shows the traceback
        from repack.fs import not_a_folder_hint

        blocked = not_a_folder_hint(Path(exc.filename), exc) if isinstance(exc.filename, str) else None
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        if blocked:  # a file where the command line asked for a folder: a usage mistake, as everywhere
            return report_error(args, InputError(f"cannot create {exc.filename}: {blocked}",
                                                 "give a folder (it is created if missing) whose parents are folders"))
        return report_error(args, RepackError(f"{exc.strerror or exc}{where}",
                                              "check that the path exists, is a directory where one is "
                                              "needed, is writable, and that the disk has room"))


def run() -> NoReturn:
    """The command's entry point (``flashinfer-repack``, ``python -m repack``): :func:`main`, then exit.

    After an interrupt (^C, SIGTERM) the process ends at once, once ``main`` has unwound (temporaries
    removed, the message and any JSON written): Python would otherwise join, at exit, threads still at work
    (a request to a silent index, a RECORD check) and could wait forever on a lock that the interrupt left
    taken inside concurrent.futures.
    """
    code = main()
    if code == EXIT_INTERRUPTED:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    raise SystemExit(code)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
def setup_logging(verbosity: int) -> None:
    """-v: our decisions; -vv: also every request (urllib3's lines)."""
    logging.basicConfig(level=logging.DEBUG if verbosity else logging.WARNING,
                        format="flashinfer-repack: %(message)s" if verbosity < 2 else "%(name)s: %(message)s",
                        stream=sys.stderr)
    if verbosity < 2:
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        # its header-parsing warning (with a traceback) precedes our own error for a cut reply
        logging.getLogger("urllib3.connection").setLevel(logging.ERROR)


def _interrupted(args: argparse.Namespace) -> int:
    """'interrupted' on a line of its own: not after a progress bar, nor after the terminal's ^C echo;
    under --json, also the one JSON object on stdout."""
    _clear_progress()
    if getattr(args, "json", False):
        try:
            emit_json({"ok": False, "error": "interrupted", "hint": "", "kind": "Interrupted",
                       "exit_code": EXIT_INTERRUPTED, "problems": [], "fields": {}})
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
    try:
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
        print("flashinfer-repack: interrupted", file=sys.stderr)
    except OSError:
        pass
    return EXIT_INTERRUPTED


def _closed_pipe() -> int:
    """The reader of stdout went away (``| head``): say nothing more and stop, as coreutils do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush cannot complain
    except (OSError, ValueError):
        pass
    return EXIT_PIPE


def report_error(args: argparse.Namespace, exc: RepackError) -> int:
    """The one place an error meets the user: its message, its hint (with our option), its exit code."""
    code, hint = exit_code_of(exc), hint_of(exc)
    try:
        if getattr(args, "json", False):
            emit_json({"ok": False, "error": str(exc), "hint": hint, "kind": type(exc).__name__,
                       "exit_code": code, "problems": list(getattr(exc, "problems", ())), "fields": exc.fields()})
            sys.stdout.flush()
        _clear_progress()
        print(f"flashinfer-repack: error: {exc}", file=sys.stderr)
        if hint:
            print(f"  hint: {hint}", file=sys.stderr)
    except BrokenPipeError:
        return _closed_pipe()
    return code


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean", and errors as JSON on stdout when --json was asked for."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        hint = self._suggestion(message)
        if self.json_errors:
            try:
                emit_json({"ok": False, "error": message, "hint": hint, "kind": "UsageError",
                           "exit_code": EXIT_USAGE, "problems": [], "fields": {}})
                sys.stdout.flush()
            except BrokenPipeError:
                sys.exit(_closed_pipe())
        command = _subcommands(self).get(self._command() or "")
        (command or self).print_usage(sys.stderr)  # an unknown option surfaces here, at the top: show its command's
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        if hint:
            print(f"  hint: {hint}", file=sys.stderr)
        sys.exit(EXIT_USAGE)

    def _suggestion(self, message: str) -> str:
        before = re.search(r"^(\S+) is given before the command '([^']*)'$", message)
        if before:
            return f"give it after '{before.group(2)}', e.g. {self.prog} {before.group(2)} ... {before.group(1)} ..."
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2)) or [c.strip() for c in choice.group(2).split(",")]
            return _did_you_mean(choice.group(1), options)
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        if unknown:
            word = unknown.group(1).split("=")[0]
            command = self._command()
            takes = sorted(name for name, sub in _subcommands(self).items() if word in _all_options(sub))
            if command is not None and command in takes:  # given before the command it belongs to
                return (f"{word} is an option of {command}: give it after '{command}', "
                        f"e.g. {self.prog} {command} ... {word}")
            if command is not None and takes:
                return f"{word} is an option of {', '.join(takes)}, not of {command}; see {self.prog} {command} --help"
            used = _subcommands(self).get(command or "")
            return _did_you_mean(word, _all_options(used or self))
        return ""

    def _command(self) -> str | None:
        """The subcommand named on the command line being parsed (unknown options surface at the top)."""
        return next((a for a in self.argv if a in _subcommands(self)), None)

    argv: Sequence[str] = ()


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _options_before_their_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """A usage error for an option of the command given before it (``--index URL publish``, ``-o dist build``,
    ``--ind URL publish``): argparse would take its value for the command, or say that a required option is
    missing although it was given.  No top-level option takes a value, so the first word that names a command
    is the command."""
    commands = _subcommands(parser)
    command = next((a for a in argv if a in commands), None)
    if command is None:
        return
    top = [o for action in parser._actions for o in action.option_strings]
    theirs = [o for action in commands[command]._actions for o in action.option_strings]
    for word in argv[:argv.index(command)]:
        name = word.split("=")[0]
        if (not word.startswith("-") or word == "-" or _resolve(word, top) is not None
                or (name.startswith("--") and any(o.startswith(name) for o in top))):  # ambiguous: argparse says
            continue
        option = _resolve(word, theirs)
        if option is not None:
            parser.error(f"{option} is given before the command {command!r}")  # the hint says where it goes


def _resolve(word: str, options: Sequence[str]) -> str | None:
    """The option ``word`` names among ``options`` as argparse reads it: ``--name[=value]`` exactly or by a
    unique prefix, ``-x[value]`` by its first two characters; None if it names none of them."""
    if word.startswith("--"):
        name = word.split("=")[0]
        if name in options:
            return name
        matches = [o for o in options if o.startswith("--") and o.startswith(name)]
        return matches[0] if len(matches) == 1 else None
    return word[:2] if word[:2] in options else None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((dict(a.choices) for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _all_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of the parser and its subcommands (unknown options surface at the top)."""
    found: list[str] = []
    for action in parser._actions:
        found += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _all_options(sub)
    return sorted(set(found))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="flashinfer-repack",
        description="Package FlashInfer's TRT-LLM BMM export headers where flashinfer-python 0.6.5-0.6.7 "
                    "looks for them, so that it starts with no network.",
        epilog=TOP_EPILOG + "\n" + EPILOG + "\n" + EXIT_TABLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    verbose_option(parser)
    sub: argparse._SubParsersAction[argparse.ArgumentParser]
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    for register in _commands():
        register(sub)
    return parser


TOP_EPILOG = """\
examples:
  flashinfer-repack doctor --python .venv           will that env's flashinfer start offline? what to fix
  flashinfer-repack build 0.6.6 -o dist             the flashinfer-cubin-headers wheel, from the index
  flashinfer-repack -v plan 0.6.6                   what 0.6.6 needs, and where each answer came from
"""


def _commands() -> list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]]:
    from repack.cli import (
        build_cmd,
        bundle_cmd,
        doctor_cmd,
        install_cmd,
        plan_cmd,
        publish_cmd,
    )

    return [plan_cmd.register_plan, build_cmd.register_build, publish_cmd.register_publish,
            doctor_cmd.register_doctor, install_cmd.register_install, bundle_cmd.register_bundle]
