"""The house's layout holds: modules grouped by role on floors, each group importing only its own and the
floors below it (siblings on a floor do not import each other), no circle between modules, the harness never
naming an implementation, and the record and the reporting side free of torch and pytest (reading a results
file needs neither)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"
# Bottom to top. The record (what a results file holds) is beneath both the side that writes it (measuring)
# and the side that reads it (reporting); the commands are on top, and the entry points (python -m harness,
# the older `python -m harness.report` forms) above them.
FLOORS = (("contract",), ("record",), ("measuring", "reporting"), ("example",), ("commands",))
GROUPS = tuple(group for floor in FLOORS for group in floor)


def floor_of(group: str) -> int:
    return next(i for i, floor in enumerate(FLOORS) if group in floor)


def module_name(path: Path) -> str:
    parts = path.relative_to(HARNESS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules `path` imports, at module level or inside functions ('from a import b' counts a.b and a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


MODULES = {module_name(p): p for p in HARNESS.rglob("*.py")}


def group_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "harness" and parts[1] in GROUPS else None


@pytest.mark.parametrize("group", GROUPS)
def test_each_group_imports_only_its_own_and_the_floors_below(group):
    wrong = {}
    for name, path in MODULES.items():
        if group_of(name) != group:
            continue
        above = sorted({g for m in imports(path) if (g := group_of(m)) and g != group
                        and floor_of(g) >= floor_of(group)})
        if above:
            wrong[name] = above
    assert not wrong, f"{group} imports groups on its floor or above: {wrong}"


def test_no_module_of_a_group_imports_the_entry_points_or_an_implementation():
    wrong = {name: sorted(m for m in imports(path) if m.startswith(("harness.__main__", "impls")))
             for name, path in MODULES.items() if group_of(name)}
    assert not {k: v for k, v in wrong.items() if v}, wrong


def test_no_circle_between_modules():
    graph = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}
    # A package's __init__ re-exporting its own modules is no circle of the house.
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    state, circles = {}, []

    def visit(node, trail):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("group", ["record", "reporting"])
def test_the_record_and_reporting_import_neither_torch_nor_pytest(group):
    modules = [name for name in MODULES if group_of(name) == group]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(m for m in ('torch', 'pytest') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{group} pulls in {out.strip()}"


def test_the_sweep_is_one_package():
    sweep = {name for name in MODULES if "sweep" in name.split(".")[-1] or ".sweep." in name}
    assert sweep and all(name.startswith("harness.commands.sweep") for name in sweep), sweep


def test_the_plugin_api_keeps_its_names():
    import harness

    for name in ("Impl", "AutogradImpl", "Outputs", "Grads", "LayerWeights", "Support", "Inputs", "Problem",
                 "register", "discover"):
        assert getattr(harness, name).__name__ == name
