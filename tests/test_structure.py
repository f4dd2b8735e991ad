"""The layout rules of docs/ARCHITECTURE.md, checked on the source: no import cycle between the
library's modules, no import from a higher layer, and no library module past the size a person
reads in one sitting (the Triton kernels excepted)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "jamdata", "pipelines", "jamtrain")
MAX_LINES = 400
EXEMPT = ("jamtrain/kernels/",)  # the fused kernels are one piece each
# what a layer may not import at module level (deferred imports inside a function are how the
# command line reaches the pipelines, and are not layering)
FORBIDDEN = {
    "schemas": ("jamdata", "pipelines", "jamtrain"),
    "jamdata": ("pipelines", "jamtrain"),
    "jamtrain": ("pipelines",),
}
GROUND = ("jamdata.errors",)  # the ground floor: importable from everywhere, schemas included


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return found


def _named(body: list[ast.stmt], name: str, is_pkg: bool) -> set[str]:
    """Modules imported by the statements run when the module is imported (not under TYPE_CHECKING,
    not inside functions or classes)."""
    out: set[str] = set()
    for node in body:
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                out |= _named(node.body, name, is_pkg) | _named(node.orelse, name, is_pkg)
        elif isinstance(node, ast.Try):
            for part in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                out |= _named(part, name, is_pkg)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, f in mods.items():
        edges = set()
        for m in _named(ast.parse(f.read_text()).body, name, f.name == "__init__.py"):
            while m and m not in mods:  # `from a.b import name` imports module a.b
                m = m.rpartition(".")[0]
            if m and m != name and not name.startswith(m + "."):  # a package's own parents load first anyway
                edges.add(m)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_library_modules():
    assert cycles(import_graph()) == []


def test_no_module_imports_a_higher_layer():
    wrong = [
        f"{name} imports {m}"
        for name, edges in import_graph().items()
        for m in edges
        if m.split(".")[0] in FORBIDDEN.get(name.split(".")[0], ()) and m not in GROUND
    ]
    assert not wrong, wrong
    assert "jamdata.errors" in import_graph()["schemas.records"]  # the check sees real imports


def test_library_modules_stay_readable():
    long = {}
    for f in modules().values():
        rel = f.relative_to(REPO).as_posix()
        n = len(f.read_text().splitlines())
        if n > MAX_LINES and not rel.startswith(EXEMPT):
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"
