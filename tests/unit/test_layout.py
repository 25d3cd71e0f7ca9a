"""The code's shape stays the architecture's (docs/DESIGN.md, "Layout"): no import cycle among
the project's modules, no module over 600 lines, every error drawn in the errors module's
docstring, comments that point only at files in the repository."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import mesh.errors

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("mesh", "agents", "distributed_grid")
MAX_MODULE_LINES = 600


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


def module_level_imports(name: str, path: Path) -> set[str]:
    """Modules imported when ``name`` is imported: top-level statements, including those inside
    if/try/with, but not under ``if TYPE_CHECKING`` and not inside functions."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()

    def visit(stmts: list[ast.stmt]) -> None:
        for s in stmts:
            if isinstance(s, ast.Import):
                out.update(a.name for a in s.names)
            elif isinstance(s, ast.ImportFrom):
                if s.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (s.level - 1)]
                    module = ".".join(base + ([s.module] if s.module else []))
                else:
                    module = s.module or ""
                out.add(module)
                out.update(f"{module}.{a.name}" for a in s.names)
            elif isinstance(s, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(s.test):
                    visit(s.body)
                visit(s.orelse)
            elif isinstance(s, (ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(s, field, []) or [])
                for handler in getattr(s, "handlers", []) or []:
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return out


def test_no_import_cycle_among_our_modules():
    mods = modules()
    graph = {name: {m for m in module_level_imports(name, path) if m in mods and m != name}
             for name, path in mods.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("package", ["mesh", "agents"])
def test_no_module_is_over_600_lines(package):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_every_error_class_is_drawn_in_the_errors_docstring():
    doc = mesh.errors.__doc__ or ""
    classes = [name for name, obj in vars(mesh.errors).items()
               if inspect.isclass(obj) and issubclass(obj, mesh.errors.MeshError)
               and obj.__module__ == "mesh.errors" and not name.startswith("_")]
    missing = [name for name in classes if f" {name} " not in doc and f" {name}\n" not in doc]
    assert not missing, f"not drawn in mesh/errors.py's docstring: {missing}"
    # and nothing raises a MeshError defined elsewhere
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and name != "mesh.errors":
                bases = {ast.unparse(b) for b in node.bases}
                assert not bases & {"MeshError", "mesh.errors.MeshError"}, \
                    f"{name}.{node.name} is an error outside mesh/errors.py"


def test_comments_point_only_at_files_in_the_repository():
    outside = ("PERFORMANCE.md", "STYLE.md", "ARCHITECTURE.md", "shared/", "../")
    found = []
    for path in modules().values():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(o in line for o in outside):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
