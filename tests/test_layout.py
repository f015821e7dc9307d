"""The house's layout holds: modules grouped by role, each group importing only the groups below
it, and the reporting side free of torch and pytest (reading a results file needs neither)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "harness"
# Bottom to top: a module may import its own group and the groups before it.
LAYERS = ("contract", "reporting", "measuring", "example", "commands")


def imported_groups(path: Path) -> set[str]:
    """harness groups a module imports, at module level or inside functions."""
    groups = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "harness" and len(parts) > 1 and parts[1] in LAYERS:
                groups.add(parts[1])
    return groups


@pytest.mark.parametrize("layer", LAYERS)
def test_each_group_imports_only_groups_below_it(layer):
    allowed = set(LAYERS[:LAYERS.index(layer) + 1])
    wrong = {p.name: sorted(imported_groups(p) - allowed) for p in (HARNESS / layer).glob("*.py")}
    assert not {k: v for k, v in wrong.items() if v}, f"{layer} imports groups above it: {wrong}"


def test_reporting_imports_neither_torch_nor_pytest():
    modules = [f"harness.reporting.{p.stem}" for p in (HARNESS / "reporting").glob("*.py") if p.stem != "__init__"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(m for m in ('torch', 'pytest') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"reporting pulls in {out.strip()}"


def test_the_plugin_api_keeps_its_names():
    import harness

    for name in ("Impl", "AutogradImpl", "Outputs", "Grads", "LayerWeights", "Support", "Inputs", "Problem",
                 "register", "discover"):
        assert getattr(harness, name).__name__ == name
