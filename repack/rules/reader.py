"""The one reader of flashinfer-python's code: what a version needs, or "cannot tell".

It answers exactly one of three things about a flashinfer-python's source text
(``flashinfer/**.py``, parsed with :mod:`ast`, never imported):

- it **needs** the supplementary package: every call of the header downloader
  (``download_trtllm_headers`` in 0.6.5-0.6.7) is followed from its call site,
  through import aliases, module aliases, re-exports, keyword arguments and
  wrapper functions that forward their parameters, to one set of exact values:
  the destination under ``FLASHINFER_CUBIN_DIR``, the header list, the marker's
  name and content, and the checksum file and its pinned sha256, taken from the
  ``get_cubin(...)`` of the very call that passes the artifact path;
- it does **not** need it, because no header downloader exists or nothing calls it;
- it **cannot tell** (:class:`~repack.rules.scope.CannotTellError`, naming file
  and line): any reference to the downloader that cannot be fully resolved,
  a downloader whose body is not the shape modelled here, an argument that is
  not a constant expression of the kinds handled.

The downloader's own body says what its parameters mean (which one is the
destination, which the checksum text, what is written to the marker and what the
marker is compared with), so reordered or renamed parameters are read right.
"""

from __future__ import annotations

import ast
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from repack.rules.scope import CannotTellError, Codebase, Scope, Target, module_name

HEADER_FUNCTION = "download_trtllm_headers"
MARKER_HINT = ".artifact_hash"  # a function that writes this marker is a header downloader, whatever its name
LOADER_MODULE = "flashinfer.jit.cubin_loader"
ENV_MODULE = "flashinfer.jit.env"
CUBIN_DIR = "FLASHINFER_CUBIN_DIR"
GET_CUBIN = ("get_cubin", "get_artifact")  # get_artifact is get_cubin's name from 0.6.8
MAX_DEPTH = 12


@dataclass(frozen=True)
class CubinPath:
    """``FLASHINFER_CUBIN_DIR / part / ...``."""

    parts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fetched:
    """``get_cubin(path, sha256)``: the bytes of ``FLASHINFER_CUBIN_DIR/path``, pinned to ``sha256``."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Download:
    """One resolved call of the header downloader."""

    dest_dir: str
    header_path: str
    headers: tuple[str, ...]
    marker_name: str
    marker_content: str
    checksums: Fetched


#: What an argument evaluates to: a string, a tuple of values, a path under FLASHINFER_CUBIN_DIR, a get_cubin result.
Value = Union[str, tuple[Any, ...], "CubinPath", "Fetched"]
#: Builds the error for a node the reader cannot follow (raised by the caller).
Fail = Callable[[ast.AST, str], CannotTellError]
#: A function definition (a header downloader or its wrapper).
Def = ast.FunctionDef | ast.AsyncFunctionDef
#: The function definitions this reader follows (a lambda forwards too, but is refused where met).
_FUNCS_READ = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


class _NeedsParam(Exception):
    """An argument depends on a parameter of the enclosing function (a wrapper)."""

    def __init__(self, func: ast.AST) -> None:
        self.func = func


@dataclass(frozen=True)
class _Bound:
    expr: ast.AST
    scope: Scope
    env: Mapping[str, _Bound] | None


# -- values -----------------------------------------------------------------------------

class Evaluator:
    """The small subset of Python these arguments are written in, evaluated statically."""

    def __init__(self, code: Codebase) -> None:
        self.code = code

    def value(self, expr: ast.AST, scope: Scope, env: Mapping[str, _Bound] | None = None, depth: int = 0) -> Value:
        if depth > 40:
            raise self.cannot(scope, expr, "an expression too deep to follow")
        def ev(e: ast.AST) -> Value:
            return self.value(e, scope, env, depth + 1)

        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.JoinedStr):
            return "".join(self._formatted(v, scope, ev) for v in expr.values)
        if isinstance(expr, (ast.List, ast.Tuple)):
            out: list[Any] = []
            for elt in expr.elts:
                out.extend(self._sequence(ev(elt.value), scope, elt) if isinstance(elt, ast.Starred) else [ev(elt)])
            return tuple(out)
        if isinstance(expr, ast.BinOp):
            return self._binop(expr, ev(expr.left), ev(expr.right), scope)
        if isinstance(expr, (ast.Name, ast.Attribute)):
            return self._named(expr, scope, env, depth)
        if isinstance(expr, ast.Call):
            return self._call(expr, scope, env, depth)
        raise self.cannot(scope, expr, f"{_show(expr)} is not a value this reader evaluates")

    def _formatted(self, part: ast.AST, scope: Scope, ev: Callable[[ast.AST], Value]) -> str:
        if isinstance(part, ast.FormattedValue):
            if part.format_spec is not None or part.conversion not in (-1, ord("s")):
                raise self.cannot(scope, part, f"a formatted value {_show(part)}")
            part = part.value
        got = ev(part)
        if not isinstance(got, str):
            raise self.cannot(scope, part, f"{_show(part)} in an f-string is not a string")
        return got

    def _sequence(self, got: Value, scope: Scope, at: ast.AST) -> tuple[Any, ...]:
        if not isinstance(got, tuple):
            raise self.cannot(scope, at, f"*{_show(at)} is not a list of strings")
        return got

    def _binop(self, expr: ast.BinOp, left: Value, right: Value, scope: Scope) -> Value:
        if isinstance(expr.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
            return left + right
        if isinstance(expr.op, ast.Add) and isinstance(left, tuple) and isinstance(right, tuple):
            return left + right
        if isinstance(expr.op, ast.Div) and isinstance(left, CubinPath) and isinstance(right, str):
            return CubinPath((*left.parts, right))
        raise self.cannot(scope, expr, f"{_show(expr)} combines values this reader does not")

    def _named(self, expr: ast.AST, scope: Scope, env: Mapping[str, _Bound] | None, depth: int) -> Value:
        target = self.code.resolve(expr, scope)
        if target.kind == "value" and target.name == CUBIN_DIR and module_name(target.module) == ENV_MODULE:
            return CubinPath()
        if target.kind == "value" and target.node is not None and target.scope is not None:
            return self.value(target.node, target.scope, None, depth + 1)
        if target.kind == "param":
            bound = (env or {}).get(target.name) if env is not None and _owns(env, target) else None
            if bound is None and target.node is not None:
                raise _NeedsParam(target.node)
            if bound is None:
                raise self.cannot(scope, expr, f"{_show(expr)} is a parameter of no known function")
            return self.value(bound.expr, bound.scope, bound.env, depth + 1)
        raise self.cannot(scope, expr, f"{_show(expr)} does not resolve to one constant ({target.kind})")

    def _call(self, call: ast.Call, scope: Scope, env: Mapping[str, _Bound] | None, depth: int) -> Value:
        target = self.code.resolve(call.func, scope)

        def ev(e: ast.AST) -> Value:
            return self.value(e, scope, env, depth + 1)

        if target.kind == "external" and target.module in ("pathlib.Path", "pathlib.PurePosixPath", "builtins.str") \
                and len(call.args) == 1 and not call.keywords:
            got = ev(call.args[0])
            if isinstance(got, (str, CubinPath)):
                return got
        if target.kind == "def" and target.name in GET_CUBIN and module_name(target.module) == LOADER_MODULE:
            bound = bind(self, target, call, scope, env)
            names = [a.arg for a in _function(self, target, scope, call).args.args]
            path, sha = (self.value(b.expr, b.scope, b.env, depth + 1) for b in (bound[names[0]], bound[names[1]]))
            if isinstance(path, str) and isinstance(sha, str):
                return Fetched(relative_path(path, scope, call, self), sha)
        raise self.cannot(scope, call, f"{_show(call)} is a call this reader does not evaluate")

    def cannot(self, scope: Scope, node: ast.AST, what: str) -> CannotTellError:
        return CannotTellError(scope.path, getattr(node, "lineno", 0), what)


def _owns(env: Mapping[str, _Bound], target: Target) -> bool:
    return getattr(env, "func", None) is target.node


class _Env(dict[str, Any]):
    """Parameter name -> bound argument, for one call of one function (``func``)."""

    def __init__(self, func: ast.AST, items: Mapping[str, _Bound]) -> None:
        super().__init__(items)
        self.func = func


def _function(ev: Evaluator, target: Target, scope: Scope, call: ast.Call) -> Def | ast.Lambda:
    """The definition a "def" target carries (scope.Target says so; checked, not assumed)."""
    if not isinstance(target.node, _FUNCS_READ):
        raise ev.cannot(scope, call, f"{_show(call)} calls {target.name}, whose definition was not found")
    return target.node


def bind(ev: Evaluator, target: Target, call: ast.Call, scope: Scope, env: Mapping[str, _Bound] | None) -> _Env:
    """Python's argument binding for ``call`` of the function ``target`` (no ``*``/``**`` at the call)."""
    func = _function(ev, target, scope, call)
    args = func.args
    positional = [*args.posonlyargs, *args.args]
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise ev.cannot(scope, call, f"{_show(call)} passes *args or **kwargs")
    if len(call.args) > len(positional):
        raise ev.cannot(scope, call, f"{_show(call)} passes more positional arguments than {target.name}() takes")
    # fewer arguments than parameters is normal (defaults fill the rest); more was refused above
    bound = {p.arg: _Bound(a, scope, env) for p, a in zip(positional, call.args, strict=False)}
    for k in call.keywords:
        if k.arg in bound or k.arg not in {p.arg for p in positional + args.kwonlyargs}:
            raise ev.cannot(scope, call, f"{_show(call)} passes {k.arg}= that {target.name}() does not take once")
        bound[k.arg] = _Bound(k.value, scope, env)
    home = ev.code.scope_at(target.module, func)
    defaults = dict(zip([p.arg for p in positional][len(positional) - len(args.defaults):], args.defaults, strict=True))
    defaults.update({p.arg: d for p, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None})
    for name, default in defaults.items():
        bound.setdefault(name, _Bound(default, home, None))
    missing = [p.arg for p in positional + args.kwonlyargs if p.arg not in bound]
    if missing:
        raise ev.cannot(scope, call, f"{_show(call)} leaves {', '.join(missing)} of {target.name}() unset")
    return _Env(func, bound)


def relative_path(path: str, scope: Scope, node: ast.AST, ev: Evaluator) -> str:
    """A path under FLASHINFER_CUBIN_DIR as pathlib joins it (``a//b`` is ``a/b``); never absolute or upward."""
    norm = posixpath.normpath(path) if path else ""
    if not norm or norm.startswith(("/", "..")) or norm == "." or "\\" in norm or "\0" in norm:
        raise ev.cannot(scope, node, f"the path {path!r} does not stay under FLASHINFER_CUBIN_DIR")
    return norm


def _line(node: ast.AST) -> int:
    """The line of ``node`` (every statement and expression has one; a module or an argument list has none)."""
    return getattr(node, "lineno", 0)


def _show(node: ast.AST) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


# -- the downloader's own body ------------------------------------------------------------

@dataclass(frozen=True)
class Downloader:
    """What a header downloader's body does with its parameters (read, not assumed)."""

    path: str
    node: Def
    op: str            # compared with "bmm"
    bmm_headers: ast.AST   # the header list of the "bmm" branch
    dest: str          # joined with each header and with the marker name
    header_path: str   # the URL prefix of each header
    checksum: str      # the checksums.txt text that each header's sha256 is picked from
    marker_name: str
    marker_written: ast.AST   # write_if_different(marker, <this>)
    marker_compared: ast.AST | None  # if <marker text>.strip() != <this>: raise
    strip: bool


def read_downloader(code: Codebase, path: str, func: Def) -> Downloader:
    ev = Evaluator(code)
    scope = code.scope_at(path, func)
    scope = code.scope_of_body(path, func, scope) if scope.node is not func else scope
    params = {a.arg for a in [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]}

    def fail(node: ast.AST, what: str) -> CannotTellError:
        return ev.cannot(scope, node, f"{func.name}(): {what}")

    local = _single_assignments(func)
    op, headers = _bmm_branch(func, params, fail)
    loop = next((s for s in func.body if isinstance(s, ast.For) and isinstance(s.target, ast.Name)), None)
    if loop is None or not isinstance(loop.target, ast.Name):
        raise fail(func, "no loop over the header list")
    name = loop.target.id
    get_file = _loop_call(loop, code, scope, "get_file", fail)
    in_loop = _single_assignments(loop)
    first3 = [_through(a, in_loop) for a in get_file.args[:3]] if len(get_file.args) >= 3 else [None, None, None]
    uri, sha, dest_file = first3
    header_param = _fstring_prefix(uri, name, params)
    checksum = _meta_hash_param(sha, name, params, code, scope)
    dest = _path_param(_strip_str(dest_file), name, local, params)
    if not (header_param and checksum and dest):
        raise fail(get_file, f"the call {_show(get_file)} is not get_file(f'{{header_path}}/{{file}}', "
                             "get_meta_hash(checksum, file), str(dest / file))")
    marker_name, marker_var = _marker(func, dest, local, params, fail)
    written, compared, strip = _marker_io(func, marker_var, local, code, scope, fail)
    return Downloader(path, func, op, headers, dest, header_param, checksum, marker_name, written, compared, strip)


def _single_assignments(node: ast.AST) -> dict[str, ast.AST]:
    """Names assigned exactly once in ``node`` (a name assigned twice is left out: it is not one value)."""
    seen: dict[str, list[ast.AST]] = {}
    for n in ast.walk(node):
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            seen.setdefault(n.targets[0].id, []).append(n.value)
    return {k: v[0] for k, v in seen.items() if len(v) == 1}


def _through(expr: ast.AST | None, local: Mapping[str, ast.AST]) -> ast.AST | None:
    hops = 0
    while isinstance(expr, ast.Name) and expr.id in local and hops < 5:
        expr, hops = local[expr.id], hops + 1
    return expr


def _bmm_branch(func: Def, params: set[str], fail: Fail) -> tuple[str, ast.AST]:
    for stmt in func.body:
        if isinstance(stmt, ast.If) and isinstance(stmt.test, ast.Compare) and len(stmt.test.ops) == 1 \
                and isinstance(stmt.test.ops[0], ast.Eq):
            sides = [stmt.test.left, stmt.test.comparators[0]]
            names = [s.id for s in sides if isinstance(s, ast.Name) and s.id in params]
            if names and any(isinstance(s, ast.Constant) and s.value == "bmm" for s in sides):
                lists = [s for s in stmt.body if isinstance(s, ast.Assign) and len(s.targets) == 1]
                if len(lists) != 1:
                    raise fail(stmt, "the 'bmm' branch does not assign one header list")
                return names[0], lists[0].value
    raise fail(func, "no `if <op> == 'bmm':` branch choosing the header list")


def _loop_call(loop: ast.For, code: Codebase, scope: Scope, name: str, fail: Fail) -> ast.Call:
    calls = [n for n in ast.walk(loop) if isinstance(n, ast.Call)
             and code.resolve(n.func, scope).kind == "def" and code.resolve(n.func, scope).name == name]
    if len(calls) != 1 or calls[0].keywords:
        raise fail(loop, f"the loop over the headers does not call {name}() once, positionally")
    return calls[0]


def _fstring_prefix(node: ast.AST | None, loop_var: str, params: set[str]) -> str | None:
    if isinstance(node, ast.JoinedStr) and len(node.values) == 3:
        head, sep, tail = node.values
        if (isinstance(head, ast.FormattedValue) and isinstance(head.value, ast.Name) and head.value.id in params
                and isinstance(sep, ast.Constant) and sep.value == "/"
                and isinstance(tail, ast.FormattedValue) and isinstance(tail.value, ast.Name)
                and tail.value.id == loop_var):
            return head.value.id
    return None


def _meta_hash_param(node: ast.AST | None, loop_var: str, params: set[str], code: Codebase, scope: Scope) -> str | None:
    if isinstance(node, ast.Call) and len(node.args) == 2 and not node.keywords:
        target = code.resolve(node.func, scope)
        text, name = node.args
        if (target.kind == "def" and target.name == "get_meta_hash" and isinstance(text, ast.Name)
                and text.id in params and isinstance(name, ast.Name) and name.id == loop_var):
            return text.id
    return None


def _strip_str(node: ast.AST | None) -> ast.AST | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str" and len(node.args) == 1:
        return node.args[0]
    return node


def _path_param(node: ast.AST | None, loop_var: str | None, local: Mapping[str, ast.AST],
                params: set[str]) -> str | None:
    """The parameter ``P`` in ``P / loop_var`` (``P`` possibly rebound as ``Path(P)``)."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.left, ast.Name)):
        return None
    if loop_var is not None and not (isinstance(node.right, ast.Name) and node.right.id == loop_var):
        return None
    return _param_of(node.left.id, local, params)


def _param_of(name: str, local: Mapping[str, ast.AST], params: set[str]) -> str | None:
    value = local.get(name)
    if isinstance(value, ast.Call) and len(value.args) == 1 and isinstance(value.args[0], ast.Name) \
            and ast.unparse(value.func) in ("pathlib.Path", "Path") and value.args[0].id == name:
        return name if name in params else None  # ``dest = pathlib.Path(dest)``
    if name in params and name not in local:
        return name
    return None


def _marker(func: Def, dest: str, local: Mapping[str, ast.AST], params: set[str],
            fail: Fail) -> tuple[str, str]:
    found = [(k, v.right.value) for k, v in local.items()
             if isinstance(v, ast.BinOp) and isinstance(v.op, ast.Div) and isinstance(v.left, ast.Name)
             and _param_of(v.left.id, local, params) == dest and isinstance(v.right, ast.Constant)
             and isinstance(v.right.value, str)]
    if len(found) != 1 or "/" in found[0][1] or found[0][1] in ("", ".", ".."):
        raise fail(func, "no single marker file `<dest> / '<name>'`")
    return found[0][1], found[0][0]


def _marker_io(func: Def, marker_var: str, local: Mapping[str, ast.AST], code: Codebase, scope: Scope,
               fail: Fail) -> tuple[ast.AST, ast.AST | None, bool]:
    writes = [n for n in ast.walk(func) if isinstance(n, ast.Call) and len(n.args) == 2 and not n.keywords
              and code.resolve(n.func, scope).name == "write_if_different"
              and isinstance(n.args[0], ast.Name) and n.args[0].id == marker_var]
    if len(writes) != 1:
        raise fail(func, f"the marker is not written once with write_if_different({marker_var}, ...)")
    other = [n for n in ast.walk(func) if isinstance(n, ast.Name) and n.id == marker_var
             and isinstance(n.ctx, ast.Load) and not any(n is w.args[0] for w in writes)]
    compared, strip = None, False
    for test in (n.test for n in ast.walk(func) if isinstance(n, ast.If)):
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.NotEq) \
                and isinstance(test.left, ast.Name) and test.left.id in local:
            read = local[test.left.id]
            text = ast.unparse(read)
            if re.fullmatch(r"\w+\.read\(\)(\.strip\(\))?", text):
                if compared is not None:
                    raise fail(test, "the marker is compared twice")
                compared, strip = test.comparators[0], text.endswith(".strip()")
    if len(other) > 2 or (other and compared is None):
        raise fail(func, f"the marker {marker_var} is used in a way this reader does not model")
    return writes[0].args[1], compared, strip


# -- the whole codebase -------------------------------------------------------------------

class Reader:
    """Find every header downloader and every call of one, and resolve each call to a :class:`Download`."""

    def __init__(self, code: Codebase) -> None:
        self.code = code
        self.ev = Evaluator(code)
        self.downloaders: dict[int, Downloader | CannotTellError] = {}
        self.wrappers: dict[int, tuple[str, ast.AST]] = {}   # func id -> (path, func) forwarding to a downloader
        self.names: set[str] = {HEADER_FUNCTION}
        self.sites: list[tuple[str, ast.Call, Target]] = []

    def roots(self) -> list[tuple[str, Def]]:
        found: list[tuple[str, Def]] = []
        for path, text in sorted(self.code.texts.items()):
            if HEADER_FUNCTION in text or MARKER_HINT in text:
                for node in ast.walk(self.code.tree(path)):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                            node.name == HEADER_FUNCTION or any(isinstance(c, ast.Constant) and c.value == MARKER_HINT
                                                                 for c in ast.walk(node))):
                        found.append((path, node))
        return found

    def read(self) -> list[Download]:
        for path, func in self.roots():
            self.names.add(func.name)
            try:
                self.downloaders[id(func)] = read_downloader(self.code, path, func)
            except CannotTellError as exc:  # only an error if something calls it
                self.downloaders[id(func)] = exc
        scanned: set[str] = set()
        while True:
            pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(self.names))) + r")\b")
            todo = [p for p in sorted(self.code.texts) if pattern.search(self.code.texts[p])]
            key = ",".join(sorted(self.names))
            if key in scanned:
                break
            scanned.add(key)
            self.sites = []
            for path in todo:
                self._scan(path)
            for path in sorted(self.code.texts):
                if "import *" in self.code.texts[path] and path not in todo:
                    self._aliases(path)  # a star import binds the downloader without spelling its name
        for path, wrapper in self.wrappers.values():
            if not any(t.node is wrapper for _, _, t in self.sites):
                raise CannotTellError(path, getattr(wrapper, "lineno", 0), f"{getattr(wrapper, 'name', 'a lambda')}() "
                                      "passes its parameters "
                                      "on to the header downloader, and no call of it could be read")
        out = []
        for path, call, target in self.sites:
            scope = self.code.scope_at(path, call)
            try:
                out.extend(self._downloads(call, target, scope, None, 0))
            except _NeedsParam:
                continue  # a call inside a wrapper: read through the wrapper's own callers
        return out

    def _is_downloader(self, target: Target) -> bool:
        return target.kind == "def" and (id(target.node) in self.downloaders or id(target.node) in self.wrappers)

    def _scan(self, path: str) -> None:
        code = self.code
        for node in ast.walk(code.tree(path)):
            if isinstance(node, ast.Constant) and node.value in self.names and not self._in_all(path, node):
                raise CannotTellError(path, node.lineno, f"the string {node.value!r}: a lookup by name this "
                                      "reader does not follow")
            named = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if named is None or named not in self.names:
                continue
            scope = code.scope_at(path, node)
            target = code.resolve(node, scope)
            if isinstance(getattr(node, "ctx", None), ast.Store):
                raise CannotTellError(path, _line(node), f"assigns to {named}")
            parent = code.parent(path, node)
            if self._is_downloader(target):
                if not (isinstance(parent, ast.Call) and parent.func is node):
                    raise CannotTellError(path, _line(node), f"refers to {named} without calling it: "
                                          f"{_show(parent or node)}")
                self._site(path, parent, target, scope)
            elif target.kind in ("unknown", "external") or named == HEADER_FUNCTION:
                # a local variable that merely shares an alias's name is harmless; anything unresolved is not
                raise CannotTellError(path, _line(node), f"{_show(node)} may be the header downloader, and "
                                      "what it refers to cannot be resolved")
        self._aliases(path)

    def _aliases(self, path: str) -> None:
        """Names that ``import ... as`` binds to a downloader are downloaders too (searched for everywhere)."""
        for node in ast.walk(self.code.tree(path)):
            if isinstance(node, ast.ImportFrom):
                scope = self.code.scope_at(path, node)
                for alias in node.names:
                    if alias.name == "*":
                        base = self.code.module_target(_from_base(path, node))
                        if base.kind == "module" and any(self._is_downloader(self.code.member(base, n))
                                                         for n in self.names):
                            raise CannotTellError(path, node.lineno, "a star import of a module that holds the "
                                                  "header downloader")
                    elif alias.asname and self._is_downloader(self.code.lookup(alias.asname, scope)):
                        self.names.add(alias.asname)

    def _in_all(self, path: str, node: ast.AST) -> bool:
        """A name listed in ``__all__`` is an export, not a lookup."""
        up = self.code.parent(path, node)
        while up is not None and not isinstance(up, ast.stmt):
            up = self.code.parent(path, up)
        targets = up.targets if isinstance(up, ast.Assign) else [up.target] if isinstance(
            up, (ast.AugAssign, ast.AnnAssign)) else []
        return any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)

    def _site(self, path: str, call: ast.Call, target: Target, scope: Scope) -> None:
        self.sites.append((path, call, target))
        try:
            self._downloads(call, target, scope, None, 0)
        except _NeedsParam as exc:
            func = exc.func
            if id(func) not in self.wrappers:
                self.wrappers[id(func)] = (path, func)
                if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    self.names.add(func.name)
                else:
                    raise CannotTellError(path, call.lineno, "a lambda passes its parameters on to the header "
                                          "downloader") from None

    def _downloads(self, call: ast.Call, target: Target, scope: Scope, env: Mapping[str, _Bound] | None,
                   depth: int) -> list[Download]:
        if depth > MAX_DEPTH:
            raise CannotTellError(scope.path, call.lineno, "wrappers nested too deep to follow")
        found = self.downloaders.get(id(target.node))
        if isinstance(found, CannotTellError):
            raise found
        bound = bind(self.ev, target, call, scope, env)
        if isinstance(found, Downloader):
            return [self._download(found, bound, call, scope)]
        wrapper_path, func = self.wrappers[id(target.node)]
        inner_scope = self.code.scope_of_body(wrapper_path, func, self.code.scope_at(wrapper_path, func))
        out = []
        for path, inner, inner_target in self.sites:
            if path == wrapper_path and self.code.scope_at(path, inner).node is func:
                out.extend(self._downloads(inner, inner_target, inner_scope, bound, depth + 1))
        return out

    def _download(self, d: Downloader, bound: _Env, call: ast.Call, scope: Scope) -> Download:
        ev = self.ev

        def val(name: str) -> Value:
            return ev.value(bound[name].expr, bound[name].scope, bound[name].env)

        op = val(d.op)
        if op != "bmm":
            raise ev.cannot(scope, call, f"the header downloader is called for {op!r}; only 'bmm' is modelled")
        dest, header_path, checksums = val(d.dest), val(d.header_path), val(d.checksum)
        if not isinstance(dest, CubinPath) or not dest.parts:
            raise ev.cannot(scope, call, f"the destination {dest!r} is not under FLASHINFER_CUBIN_DIR")
        if not isinstance(checksums, Fetched) or not isinstance(header_path, str):
            raise ev.cannot(scope, call, "the checksums argument is not get_cubin(<path>, <sha256>) of this call")
        home = self.code.scope_of_body(d.path, d.node, self.code.scope_at(d.path, d.node))
        written = ev.value(d.marker_written, home, bound)
        compared = ev.value(d.marker_compared, home, bound) if d.marker_compared is not None else written
        if not d.strip and d.marker_compared is not None:
            raise ev.cannot(home, d.marker_compared, "the marker is compared without .strip(): not modelled")
        if not isinstance(written, str) or written.strip() != compared:
            raise ev.cannot(scope, call, f"the marker is written as {written!r} but must read back as "
                                         f"{compared!r}: flashinfer would refuse its own marker")
        headers = ev.value(d.bmm_headers, home, bound)
        if not isinstance(headers, tuple) or not headers or not all(isinstance(h, str) for h in headers):
            raise ev.cannot(home, d.bmm_headers, "the 'bmm' header list is not a list of strings")
        dest_dir = relative_path("/".join(dest.parts), scope, call, ev)
        return Download(dest_dir, header_path, tuple(relative_path(h, home, d.bmm_headers, ev) for h in headers),
                        d.marker_name, written, checksums)


def _from_base(path: str, node: ast.ImportFrom) -> str:
    from repack.rules.scope import absolute_module

    return absolute_module(module_name(path), node.module, node.level, path.endswith("__init__.py"))


# -- FLASHINFER_CUBIN_DIR ------------------------------------------------------------------

@dataclass(frozen=True)
class CubinDirRules:
    """How ``flashinfer/jit/env.py``'s ``_get_cubin_dir`` picks FLASHINFER_CUBIN_DIR (read from it).

    Checked against the real code of 0.6.4-0.6.8, 0.6.15 (package first, a version mismatch raises
    RuntimeError inside ``import flashinfer``), 0.6.16 (the variable first, mismatch raises) and 0.7.2
    (the variable first; a mismatched package is ignored with a warning and the default cache is used).
    """

    env_var_first: bool
    mismatch: str             # "import-fails" or "package-ignored"
    skips_unknown_build: bool  # no check when flashinfer's version is 0.0.0+unknown (no _build_meta.py)


def read_cubin_dir_rules(code: Codebase) -> CubinDirRules:
    path = code.paths.get(ENV_MODULE)
    if path is None:
        raise CannotTellError("flashinfer/jit/env.py", 0, "missing: where FLASHINFER_CUBIN_DIR lies is unknown")
    tree = code.tree(path)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    func = funcs.get("_get_cubin_dir")
    if func is None:
        raise CannotTellError(path, 0, "no _get_cubin_dir(): where FLASHINFER_CUBIN_DIR lies is unknown")
    env_at = _first(func.body, lambda n: isinstance(n, ast.Call) and ast.unparse(n) in (
        "os.getenv('FLASHINFER_CUBIN_DIR')", "os.environ.get('FLASHINFER_CUBIN_DIR')"))
    pkg = [i for i, s in enumerate(func.body)
           if isinstance(s, ast.If) and ast.unparse(s.test) == "has_flashinfer_cubin()"]
    if env_at is None or len(pkg) != 1:
        raise CannotTellError(path, func.lineno, "_get_cubin_dir() is not `FLASHINFER_CUBIN_DIR` and "
                                                 "`if has_flashinfer_cubin():` in some order")
    branch = func.body[pkg[0]]
    caught = [h for n in ast.walk(branch) if isinstance(n, ast.Try) for h in n.handlers
              if h.type is not None and ast.unparse(h.type) == "RuntimeError"]
    checks = [f for f in funcs.values() if f.name in {ast.unparse(c.func) for c in ast.walk(branch)
                                                       if isinstance(c, ast.Call)}]
    raises = any(isinstance(n, ast.Raise) for body in [branch, *checks] for n in ast.walk(body))
    if not raises:
        raise CannotTellError(path, branch.lineno, "_get_cubin_dir() does not check flashinfer-cubin's version "
                                                   "in a way this reader knows")
    unknown = any(isinstance(n, ast.Constant) and n.value == "0.0.0+unknown"
                  for body in [branch, *checks] for n in ast.walk(body))
    return CubinDirRules(env_var_first=env_at < pkg[0], mismatch="package-ignored" if caught else "import-fails",
                         skips_unknown_build=unknown)


def _first(body: list[ast.stmt], match: Callable[[ast.AST], bool]) -> int | None:
    for i, stmt in enumerate(body):
        if any(match(n) for n in ast.walk(stmt)) and not (isinstance(stmt, ast.If) and ast.unparse(stmt.test)
                                                             == "has_flashinfer_cubin()"):
            return i
    return None


# -- facts of versions that need no package ------------------------------------------------

def artifact_constant(code: Codebase, cls: str) -> str:
    """``<cls>.TRTLLM_GEN_BMM`` of flashinfer/artifacts.py, or "" (older versions pin none)."""
    path = code.paths.get("flashinfer.artifacts")
    if path is None:
        return ""
    target = code.member(code.lookup(cls, code.module_scope(path)), "TRTLLM_GEN_BMM")
    if target.kind != "value" or target.node is None or target.scope is None:
        return ""
    try:
        got = Evaluator(code).value(target.node, target.scope)
    except (CannotTellError, _NeedsParam):
        return ""
    return got if isinstance(got, str) else ""


def symlinked_headers(code: Codebase) -> tuple[str, ...]:
    """``BMM_EXPORT_HEADERS`` (0.6.7.post1+: the headers read at the artifact path through a symlink)."""
    path = code.paths.get("flashinfer.jit.fused_moe")
    if path is None:
        return ()
    target = code.lookup("BMM_EXPORT_HEADERS", code.module_scope(path))
    if target.kind != "value" or target.node is None or target.scope is None:
        return ()
    try:
        got = Evaluator(code).value(target.node, target.scope)
    except (CannotTellError, _NeedsParam):
        return ()
    return got if isinstance(got, tuple) and all(isinstance(h, str) for h in got) else ()


def links_headers(code: Codebase) -> bool:
    path = code.paths.get(LOADER_MODULE)
    return path is not None and "ensure_symlink" in code.module_scope(path).bindings


def build_version(code: Codebase) -> str:
    """``flashinfer.__version__`` as it will be: ``_build_meta.__version__``, else 0.0.0+unknown."""
    path = code.paths.get("flashinfer._build_meta")
    if path is not None:
        for node in code.tree(path).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets) \
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    return "0.0.0+unknown"
