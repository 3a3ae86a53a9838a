"""Structural checks on the package: short functions in the trainer and the workers, no import cycles among rlkit
modules.

Both work from the source (``ast``), nothing is imported or run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rlkit"
MAX_LINES = 60
#: the packages whose every function is held to :data:`MAX_LINES` (directories under ``rlkit/``, their ``*.py``)
SHORT_FUNCTION_DIRS = ("trainer", "workers")

#: ``file: {function}`` (the file relative to ``rlkit/``) allowed over :data:`MAX_LINES` lines (or ``file: ALL``,
#: every function of a file not yet reworked), each with why. Nothing else is skipped: a new long function fails the
#: test, and an entry that names a missing file or function, or one no longer long, fails the staleness test.
ALL = "*"
LONG_FUNCTION_ALLOWLIST: dict[str, set[str] | str] = {}

#: import cycles known and left for later, each spelled as the sorted modules of its strongly connected component
CYCLE_ALLOWLIST: set[tuple[str, ...]] = set()


def _functions(tree: ast.AST):
    """``(qualified name, node)`` of every function and method, nested ones included."""

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                yield name, child
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def body_lines(fn: ast.FunctionDef) -> int:
    """Lines of a function's body (its docstring included, its signature and decorators not)."""
    return fn.body[-1].end_lineno - fn.body[0].lineno + 1


def _checked_files() -> list[Path]:
    return sorted(path for d in SHORT_FUNCTION_DIRS for path in (PACKAGE / d).glob("*.py"))


def test_no_trainer_or_worker_function_is_longer_than_60_lines():
    too_long = []
    for path in _checked_files():
        file = path.relative_to(PACKAGE).as_posix()
        allowed = LONG_FUNCTION_ALLOWLIST.get(file, set())
        for name, fn in _functions(ast.parse(path.read_text())):
            n = body_lines(fn)
            if n > MAX_LINES and allowed != ALL and name not in allowed:
                too_long.append(f"rlkit/{file}:{fn.lineno} {name}: {n} lines")
    assert not too_long, "functions over 60 lines:\n" + "\n".join(too_long)


def test_the_long_function_allowlist_names_long_functions_that_exist():
    for file, names in LONG_FUNCTION_ALLOWLIST.items():
        path = PACKAGE / file
        assert path in _checked_files(), f"allowlisted {file} is not a checked file (any more): drop the entry"
        if names == ALL:
            continue
        found = {name: body_lines(fn) for name, fn in _functions(ast.parse(path.read_text()))}
        missing = sorted(names - found.keys())
        assert not missing, f"{file}: allowlisted {missing} no longer exist(s): drop the entry"
        short = sorted(name for name in names if found[name] <= MAX_LINES)
        assert not short, f"{file}: allowlisted {short} are {MAX_LINES} lines or fewer now: drop them"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """``module -> rlkit modules it imports`` (top-level and function-level imports alike). ``from pkg import
    name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    files = {(_module_name(p)): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files and "." in t:  # an attribute of a module: the module
                    t = t.rsplit(".", 1)[0]
                if t in files and t != module:
                    graph[module].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components with more than one module (Tarjan), each as sorted module names."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(tuple(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_cycles_among_rlkit_modules():
    found = cycles(import_graph())
    new = [c for c in found if c not in CYCLE_ALLOWLIST]
    assert not new, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in new)
    stale = CYCLE_ALLOWLIST - set(found)
    assert not stale, f"allowlisted cycles that no longer exist (drop them): {sorted(stale)}"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_workers_restate_no_config_defaults():
    """Workers read the attributes of the validated recipe sections they are given; a ``.get(key, default)`` on a
    config mapping would restate a default (and could drift from the recipe's, as ``shared_prefix`` once did)."""
    found = []
    for path in sorted((PACKAGE / "workers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and len(node.args) + len(node.keywords) >= 2
            ):
                found.append(f"rlkit/workers/{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "config defaults restated in workers:\n" + "\n".join(found)
