"""The package's layout holds to docs/architecture.md: imports never form a cycle, no module
imports another's private name, modules stay small, module docstrings short, and the module map
lists exactly the modules there are."""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "gsae_cli"
MAX_LINES = 550  # "about 500": a module past this wants splitting by job
MAX_DOCSTRING_LINES = 15


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        name = ".".join(("gsae_cli", *p.relative_to(PKG).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str]]:
    """(module imported, name imported from it) for every gsae_cli import, lazy ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gsae_cli"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.append((sub, "") if sub in modules else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            found += [(a.name, "") for a in node.names if a.name.startswith("gsae_cli")]
    return found


def test_no_import_cycle_and_no_private_name_crosses_modules():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    private = []
    for m, p in modules.items():
        for target, name in _imports(p, modules):
            if modules.get(target, p).name != "__init__.py":  # a package's re-exports are not edges
                graph[m].add(target)
            if name.startswith("_"):
                private.append(f"{m} imports {target}.{name}")
    assert not private, "\n".join(private)

    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            assert state.get(n) != 1, "import cycle: " + " -> ".join([*path[path.index(n) :], n])
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_modules_are_small_and_say_their_job_briefly():
    long = []
    for m, p in _modules().items():
        n = len(p.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(p.read_text()), clean=False)
        if n > MAX_LINES:
            long.append(f"{m}: {n} lines")
        if p.name != "__main__.py" and not doc:
            long.append(f"{m}: no module docstring")
        elif doc and len(doc.splitlines()) > MAX_DOCSTRING_LINES:
            long.append(f"{m}: a {len(doc.splitlines())}-line docstring")
    assert not long, "\n".join(long)


def test_the_module_map_lists_exactly_the_modules():
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("### Module map", 1)[1].split("\n### ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    listed = {m for cell in first_cells for m in re.findall(r"`([a-z_/]+\.py)`", cell)}
    actual = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert listed - actual == set(), f"listed but missing: {sorted(listed - actual)}"
    assert actual - listed == set(), f"modules missing from docs/architecture.md: {sorted(actual - listed)}"
