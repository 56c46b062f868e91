"""Names in flashinfer-python's code, resolved the way Python would, without importing anything.

A :class:`Codebase` holds the source text of ``flashinfer/**.py`` and parses a
file only when asked.  :meth:`Codebase.resolve` follows a name or an attribute
chain through local assignments, parameters, ``import``/``from ... import``
(aliases, relative imports, re-exports through ``__init__``), class bodies and
module globals, to what it denotes (:class:`Target`).  Anything it cannot pin
down to exactly one binding is :data:`UNKNOWN`: the reader decides whether that
matters, and refuses when it does.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from repack.errors import PlanError

#: Third-party source trees (CUTLASS's Python, ...) that the wheel installs as data, not flashinfer's modules.
DATA_PREFIX = "flashinfer/data/"
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


class CannotTellError(PlanError):
    """flashinfer's code does something the reader does not understand: it refuses to guess.

    ``file`` and ``line`` point at the code; ``what`` says what was not understood.
    """

    def __init__(self, file: str, line: int, what: str) -> None:
        super().__init__(f"cannot tell what this flashinfer needs: {file}:{line}: {what}",
                         "this flashinfer-python's code has a shape the reader does not recognise, so no "
                         "answer is given rather than a wrong one; report it with the file and line")
        self.file, self.line, self.what = file, line, what


@dataclass(frozen=True)
class Target:
    """What a name denotes: ``kind`` is def, class, module, value, param, external or unknown."""

    kind: str
    module: str = ""          # the defining module's path (def, class, value, param) or dotted name (module, external)
    name: str = ""
    node: ast.AST | None = None   # the FunctionDef/ClassDef, the value expression, or the function of a param
    scope: Scope | None = None  # where ``node`` (a value) is evaluated


UNKNOWN = Target("unknown")


@dataclass
class Scope:
    """A module, class or function body: its own bindings and its enclosing scope."""

    path: str
    node: ast.AST
    parent: Scope | None
    bindings: dict[str, list[tuple[str, object]]] = field(default_factory=dict)
    stars: list[ast.ImportFrom] = field(default_factory=list)

    def bind(self, name: str, kind: str, what: object) -> None:
        self.bindings.setdefault(name, []).append((kind, what))


def module_name(path: str) -> str:
    parts = path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Codebase:
    """The ``flashinfer/**.py`` files of one flashinfer-python, parsed on demand."""

    def __init__(self, sources: Mapping[str, str]) -> None:
        self.texts = {p: t for p, t in sources.items()
                      if p.startswith("flashinfer/") and p.endswith(".py") and not p.startswith(DATA_PREFIX)}
        self.paths = {module_name(p): p for p in self.texts}
        self._trees: dict[str, ast.Module] = {}
        self._scopes: dict[int, Scope] = {}
        self._parents: dict[str, dict[int, ast.AST]] = {}
        self._depth = 0

    def tree(self, path: str) -> ast.Module:
        if path not in self._trees:
            try:
                self._trees[path] = ast.parse(self.texts[path], filename=path)
            except SyntaxError as exc:
                raise CannotTellError(path, exc.lineno or 0, f"does not parse: {exc.msg}") from None
            self._parents[path] = {id(c): n for n in ast.walk(self._trees[path]) for c in ast.iter_child_nodes(n)}
        return self._trees[path]

    def parent(self, path: str, node: ast.AST) -> ast.AST | None:
        self.tree(path)
        return self._parents[path].get(id(node))

    # -- scopes ------------------------------------------------------------------------

    def module_scope(self, path: str) -> Scope:
        return self.scope_of_body(path, self.tree(path), None)

    def scope_at(self, path: str, node: ast.AST) -> Scope:
        """The innermost function (or the module) whose body holds ``node``."""
        chain = []
        up = self.parent(path, node)
        while up is not None:
            if isinstance(up, (*_FUNCS, ast.ClassDef)):
                chain.append(up)
            up = self.parent(path, up)
        scope = self.module_scope(path)
        for body in reversed(chain):
            if not isinstance(body, ast.ClassDef):  # class bodies are not visible from their methods
                scope = self.scope_of_body(path, body, scope)
        return scope

    def scope_of_body(self, path: str, node: ast.AST, parent: Scope | None) -> Scope:
        if id(node) not in self._scopes:
            scope = Scope(path, node, parent)
            if isinstance(node, _FUNCS):
                args = node.args
                for a in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                    if a is not None:
                        scope.bind(a.arg, "param", node)
            for stmt in _own_nodes(node):
                _collect(scope, stmt, module_name(path))
            self._scopes[id(node)] = scope
        return self._scopes[id(node)]

    # -- resolution --------------------------------------------------------------------

    def resolve(self, expr: ast.AST, scope: Scope) -> Target:
        if isinstance(expr, ast.Name):
            return self.lookup(expr.id, scope)
        if isinstance(expr, ast.Attribute):
            return self.member(self.resolve(expr.value, scope), expr.attr)
        return UNKNOWN

    def lookup(self, name: str, scope: Scope | None) -> Target:
        while scope is not None:
            found = scope.bindings.get(name)
            if found:
                return self._binding(name, found, scope) if len(found) == 1 else UNKNOWN
            if scope.stars and scope.parent is None:
                return UNKNOWN  # a star import may bind it
            scope = scope.parent
        return Target("external", "builtins." + name, name)

    def _binding(self, name: str, found: list[Any], scope: Scope) -> Target:
        kind, what = found[0]
        if kind in ("def", "class"):
            return Target(kind, scope.path, name, what)
        if kind == "value":
            return Target("value", scope.path, name, what, scope)
        if kind == "param":
            return Target("param", scope.path, name, what, scope)
        if kind == "module":
            return self.module_target(what)
        if kind == "from":
            base, attr = what
            if base == module_name(scope.path) and f"{base}.{attr}" in self.paths:
                return self.module_target(f"{base}.{attr}")  # ``from . import env`` inside the package itself
            if self._depth > 50:
                return UNKNOWN  # an import cycle: nothing binds it
            self._depth += 1
            try:
                return self.member(self.module_target(base), attr)
            finally:
                self._depth -= 1
        return UNKNOWN  # bound by a loop, a with, an augmented assignment...

    def module_target(self, dotted: str) -> Target:
        return Target("module", dotted, dotted) if dotted in self.paths else Target("external", dotted, dotted)

    def member(self, base: Target, attr: str) -> Target:
        if base.kind == "module":
            scope = self.module_scope(self.paths[base.module])
            if attr in scope.bindings or scope.stars:
                return self.lookup(attr, Scope(scope.path, scope.node, None, scope.bindings, scope.stars))
            return self.module_target(f"{base.module}.{attr}")
        if base.kind == "class" and base.node is not None:  # a class target always carries its ClassDef
            body = self.scope_of_body(base.module, base.node, None)
            found = body.bindings.get(attr)
            if found and len(found) == 1 and found[0][0] == "value" and isinstance(found[0][1], ast.AST):
                return Target("value", base.module, attr, found[0][1], self.scope_at(base.module, base.node))
            return UNKNOWN
        if base.kind == "external":
            return Target("external", f"{base.module}.{attr}", attr)
        return UNKNOWN


def _own_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """The nodes of a body, not descending into nested functions or classes (their names are bound here)."""
    body: list[ast.AST] = [node.body] if isinstance(node, ast.Lambda) else list(getattr(node, "body", []))
    stack = list(body)
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, (*_FUNCS, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(n))


def _collect(scope: Scope, node: ast.AST, here: str) -> None:
    """Record what ``node`` binds in ``scope``."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        scope.bind(node.name, "def", node)
    elif isinstance(node, ast.ClassDef):
        scope.bind(node.name, "class", node)
    elif isinstance(node, ast.Assign):
        for t in node.targets:
            _bind_target(scope, t, node.value if len(node.targets) == 1 else None)
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        scope.bind(node.target.id, "value" if node.value is not None else "declared", node.value)
    elif isinstance(node, (ast.AugAssign, ast.For, ast.AsyncFor, ast.comprehension, ast.NamedExpr)):
        _bind_target(scope, node.target, None)
    elif isinstance(node, (ast.withitem,)) and node.optional_vars is not None:
        _bind_target(scope, node.optional_vars, None)
    elif isinstance(node, ast.ExceptHandler) and node.name:
        scope.bind(node.name, "other", node)
    elif isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname:
                scope.bind(alias.asname, "module", alias.name)
            else:
                scope.bind(alias.name.split(".")[0], "module", alias.name.split(".")[0])
    elif isinstance(node, ast.ImportFrom):
        base = absolute_module(here, node.module, node.level, scope.path.endswith("__init__.py"))
        for alias in node.names:
            if alias.name == "*":
                scope.stars.append(node)
            else:
                scope.bind(alias.asname or alias.name, "from", (base, alias.name))


def _bind_target(scope: Scope, target: ast.AST, value: ast.AST | None) -> None:
    if isinstance(target, ast.Name):
        scope.bind(target.id, "value" if value is not None else "other", value)
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            _bind_target(scope, elt.value if isinstance(elt, ast.Starred) else elt, None)


def absolute_module(here: str, module: str | None, level: int, is_package: bool) -> str:
    """The dotted name a ``from`` import names, relative imports resolved against ``here``."""
    if level == 0:
        return module or ""
    parts = here.split(".")
    if not is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (level - 1)] if level > 1 else parts
    return ".".join(parts + ([module] if module else []))
