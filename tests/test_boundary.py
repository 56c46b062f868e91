"""The CLI/library boundary: the source-spec parser, which options messages may name, and exit codes.

Only the CLI knows its options: library messages and hints say what to do in words (a scan of every
raise site), and every option the CLI names exists on its parser (a walk of the parser and a scan of
repack/cli's strings).  The same kind of mistake exits with the same code whichever command meets it.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

import pytest

import repack
from repack.cli import build_parser
from repack.cli.common import ERROR_EXIT_CODES, EXIT_FAIL, EXIT_USAGE, OPTION_OF_SETTING, UsageError, exit_code_of
from repack.errors import FetchError, InputError, PublishError, RepackError
from repack.fetch.sourcespec import SourceSpec, parse_source_spec
from tests.conftest import cli
from tests.support.tinywheel import make_wheel

PACKAGE = Path(repack.__file__).parent
#: An option word: ``--index-url``, not the ``--`` of a separator nor part of ``a--b``.
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
#: a short option as a hint would name it ("a writable -o directory"); not a hyphen inside words or numbers
SHORT_OPTION = re.compile(r"(?<![\w/.-])-[a-zA-Z](?![\w-])")
#: Another tool's command line quoted in our text ("pip install --dry-run ..."): its options are not ours.
FOREIGN_COMMAND = re.compile(r"\b(pip|conda|uv)\b[^\n]*")


# -- the --from parser ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, kind, location", [
    ("auto", "auto", None),
    ("cache", "cache", None),
    ("installed", "installed", None),
    ("pypi", "pypi", None),
    ("index", "index", None),
    ("artifactory", "artifactory", None),
    ("index+https://h/simple/", "index", "https://h/simple/"),
    ("index+http://h/other/", "index", "http://h/other/"),
    ("artifactory+https://h/simple/", "artifactory", "https://h/simple/"),
    ("https://h/pypi/simple/", "index", "https://h/pypi/simple/"),
    ("https://h/pypi/simple", "index", "https://h/pypi/simple"),
    ("https://h/artifactory/", "artifactory", "https://h/artifactory/"),
    ("https://h/f/flashinfer_cubin-0.6.6-py3-none-any.whl", "wheel",
     "https://h/f/flashinfer_cubin-0.6.6-py3-none-any.whl"),
    ("dist/flashinfer_cubin-0.6.6-py3-none-any.whl", "wheel", "dist/flashinfer_cubin-0.6.6-py3-none-any.whl"),
    ("site-packages/flashinfer_cubin/cubins", "directory", "site-packages/flashinfer_cubin/cubins"),
    ("Auto", "directory", "Auto"),  # the names are exact: anything else is a path, checked when opened
    ("ftp://h/x/", "artifactory", "ftp://h/x/"),  # the scheme is checked when opened (check_url)
])
def test_source_spec_table(text, kind, location):
    assert parse_source_spec(text) == SourceSpec(kind, location)


@pytest.mark.parametrize("text", ["", "index+", "artifactory+", "   "])
def test_source_spec_naming_no_place_is_an_input_error(text):
    with pytest.raises(InputError, match="names no place") as caught:
        parse_source_spec(text)
    assert caught.value.setting == "source" and caught.value.value == text


# -- options named by the CLI exist -------------------------------------------------------------

def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for action in parser._actions for o in action.option_strings}


def _strings(path: Path) -> list[tuple[int, str]]:
    """Every string constant of ``path`` but docstrings (f-strings' literal parts included)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def _named_options(text: str) -> list[str]:
    return OPTION.findall(FOREIGN_COMMAND.sub("", text))


def test_the_parser_walk_finds_every_command():
    assert set(_subparsers(build_parser())) == {"plan", "build", "publish", "install", "bundle", "doctor"}


@pytest.mark.parametrize("module", sorted(p.name for p in (PACKAGE / "cli").glob("*.py")))
def test_every_option_the_cli_names_exists(module):
    """A *_cmd.py module names its own command's options; the shared modules, any command's."""
    top = build_parser()
    commands = _subparsers(top)
    command = module[:-len("_cmd.py")] if module.endswith("_cmd.py") else None
    known = _options(top) | (_options(commands[command]) if command else
                             set().union(*(_options(p) for p in commands.values())))
    wrong = [(line, word) for line, text in _strings(PACKAGE / "cli" / module)
             for word in _named_options(text) if word not in known and not word.endswith("-")]
    assert wrong == [], f"{module} names options that {command or 'no command'} has: {wrong}"


def test_the_options_of_settings_exist():
    every = set().union(*(_options(p) for p in _subparsers(build_parser()).values()))
    assert {o for option in OPTION_OF_SETTING.values() for o in option.split("/")} <= every


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts)


def _message_strings(path: Path) -> list[tuple[int, str]]:
    """The strings of every raise site and of every name or keyword that holds a hint."""
    tree = ast.parse(path.read_text())
    roots: list[ast.AST] = [n.exc for n in ast.walk(tree) if isinstance(n, ast.Raise) and n.exc is not None]
    roots += [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
              and any(isinstance(t, ast.Name) and "hint" in t.id.lower() for t in n.targets)]
    roots += [k.value for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords if k.arg == "hint"]
    return [(node.lineno, node.value) for root in roots for node in ast.walk(root)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_the_message_scan_sees_raise_sites():
    # fails if the scan went blind (a refactor of its AST walk), which would pass the next test vacuously
    found = [text for path in _library_modules() for _, text in _message_strings(path)]
    assert len(found) > 200 and any("is neither a known source" in text for text in found)


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_library_message_names_an_option(path):
    named = [(line, text) for line, text in _message_strings(path)
             if _named_options(text) or SHORT_OPTION.search(FOREIGN_COMMAND.sub("", text))]
    assert named == [], f"{path.name}: say it in words, the CLI names its options: {named}"


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_errors_name_settings_the_cli_knows(path):
    tree = ast.parse(path.read_text())
    settings = [k.value.value for n in ast.walk(tree) if isinstance(n, ast.Call) for k in n.keywords
                if k.arg == "setting" and isinstance(k.value, ast.Constant)]
    assert set(settings) <= set(OPTION_OF_SETTING)


def test_the_library_raises_no_usage_error():
    raised = [(p.name, line) for p in _library_modules() for line, text in enumerate(p.read_text().splitlines(), 1)
              if re.search(r"\bUsageError\b", text)]
    assert raised == []


# -- one table of exit codes ----------------------------------------------------------------------

@pytest.mark.parametrize("exc, code", [
    (InputError("x"), EXIT_USAGE),
    (UsageError("x"), EXIT_USAGE),
    (FetchError("x", status=404), EXIT_FAIL),
    (PublishError("x"), EXIT_FAIL),
    (RepackError("x"), EXIT_FAIL),
])
def test_exit_codes_come_from_the_one_table(exc, code):
    assert exit_code_of(exc) == code
    assert ERROR_EXIT_CODES[-1] == (RepackError, EXIT_FAIL)  # the last row catches every library error


def _empty_venv(tmp: Path) -> Path:
    from tests.support.installs import fresh_venv

    return fresh_venv(tmp / "empty-venv").parent.parent


def _mistakes(tmp: Path) -> dict[str, list[list[str]]]:
    """The same kind of mistake, made on each command that can meet it."""
    wheel = make_wheel(tmp, "fi-boundary-demo", "1.0")
    (tmp / "notes.txt").write_text("not a package\n")
    out = ["-o", str(tmp / "out"), "--no-cache"]
    return {
        "not a package of the kind published": [
            ["publish", "--simple", str(tmp / "s"), str(tmp / "notes.txt")],
            ["publish", "--channel", str(tmp / "c"), str(tmp / "notes.txt")],
            ["publish", "--index", "http://127.0.0.1:9/", str(tmp / "notes.txt")],
        ],
        "no such file": [
            ["publish", "--simple", str(tmp / "s"), str(tmp / "gone-1.0-py3-none-any.whl")],
            ["publish", "--channel", str(tmp / "c"), str(tmp / "gone-1.0-0.conda")],
            ["build", "0.6.6", "--from", str(tmp / "gone.whl"), *out],
        ],
        "a URL that is not http(s)": [
            ["publish", "--index", "ftp://127.0.0.1/", str(wheel)],
            ["build", "0.6.6", "--index-url", "ftp://127.0.0.1/", *out],
            ["build", "0.6.6", "--from", "index+ftp://127.0.0.1/", *out],
            ["plan", "9.9.9", "--index-url", "ftp://127.0.0.1/", "--no-cache"],
            ["install", "0.6.6", "--index-url", "ftp://127.0.0.1/", "--target", str(tmp / "t")],
            ["bundle", "0.6.6", "--index-url", "ftp://127.0.0.1/", "-o", str(tmp / "b")],
        ],
        "credentials over plain http to another machine": [
            ["publish", "--index", "http://alice:s3cret@192.0.2.1/", str(wheel)],
            ["build", "0.6.6", "--index-url", "http://alice:s3cret@192.0.2.1/simple/", "--timeout", "3", *out],
            ["build", "0.6.6", "--from", "index+http://alice:s3cret@192.0.2.1/simple/", "--timeout", "3", *out],
        ],
        "an environment without that flashinfer-python": [
            ["plan", "0.6.6", "--installed"],  # the tests' own environment has no flashinfer-python
            ["install", "0.6.6", "--python", str(_empty_venv(tmp)), "--offline"],
        ],
        "a port out of range": [
            ["publish", "--index", "http://127.0.0.1:99999/", str(wheel)],
            ["build", "0.6.6", "--index-url", "http://127.0.0.1:99999/", *out],
            ["build", "0.6.6", "--from", "http://127.0.0.1:99999/x.whl", *out],
        ],
    }


@pytest.mark.parametrize("mistake", ["not a package of the kind published", "no such file",
                                     "a URL that is not http(s)", "a port out of range",
                                     "credentials over plain http to another machine",
                                     "an environment without that flashinfer-python"])
def test_the_same_mistake_gives_the_same_exit_code_everywhere(mistake, tmp_path):
    results = {" ".join(a[:2]): cli(*a, "--json") for a in _mistakes(tmp_path)[mistake]}
    codes = {what: r.returncode for what, r in results.items()}
    assert set(codes.values()) == {EXIT_USAGE}, {w: (c, results[w].stderr) for w, c in codes.items()}
    assert all("Traceback" not in r.stderr and "hint:" in r.stderr and "s3cret" not in r.stderr + r.stdout
               for r in results.values())
    for result in results.values():  # --json says the same, with the error's structured fields
        data = json.loads(result.stdout)
        assert (data["ok"], data["exit_code"]) == (False, EXIT_USAGE) and isinstance(data["fields"], dict)


def test_json_errors_carry_the_fields_and_name_the_option(tmp_path):
    result = cli("build", "0.6.6", "--index-url", "ftp://127.0.0.1/", "-o", str(tmp_path / "out"), "--json")
    data = json.loads(result.stdout)
    assert data["kind"] == "InputError" and data["fields"] == {"value": "ftp://127.0.0.1/",
                                                               "expected": "an http(s) URL", "setting": "index_url"}
    assert data["hint"].endswith("(--index-url)")
