import ast
import importlib.metadata
import sys
import textwrap
from pathlib import Path

import pytest
from mutants import RowZeroRecurrence, WrongGateOrder

import harness.contract.registry as registry_module
from harness.contract.impl import Impl
from harness.contract.registry import ENTRY_POINT_GROUP, Registry, RegistryError, discover

ROOT = Path(__file__).resolve().parent.parent
BUILTINS = {"cudnn", "fused", "modular", "cupy", "numpy"}


def test_builtins_are_registered_with_their_origin():
    registry = discover()
    assert BUILTINS <= set(registry.names())
    assert registry.registration("fused").origin == "built-in (impls.fused)"
    assert registry.registration("cupy").origin == "built-in (impls.cupy_lstm)"
    assert registry.registration("numpy").origin == "built-in (impls.cupy_lstm)"
    for reg in registry:
        assert reg.cls.description


def test_duplicate_name_is_an_error_listing_known_names():
    registry = Registry()
    registry.add(RowZeroRecurrence)
    registry.add(RowZeroRecurrence)  # the same class twice is harmless

    class Impostor(WrongGateOrder):
        name = "mutant_row0"

    with pytest.raises(RegistryError, match="registered twice.*known names: mutant_row0"):
        registry.add(Impostor)


def test_unknown_name_lists_known_names():
    registry = Registry()
    registry.add(RowZeroRecurrence)
    with pytest.raises(RegistryError, match="unknown implementation 'nope'; known names: mutant_row0"):
        registry.get("nope")


def test_only_named_impl_subclasses_register():
    registry = Registry()
    with pytest.raises(RegistryError, match="not a subclass"):
        registry.add(object)

    class Nameless(Impl):
        description = "no name"

        def forward(self, x, h0, c0): ...

        def backward(self, dy, dh_n, dc_n): ...

    with pytest.raises(RegistryError, match="'name'"):
        registry.add(Nameless)


def test_plugin_module_registers_with_its_origin():
    registry = Registry()
    # a fresh registry gets nothing from an already-imported module, so load through the decorator's path
    with registry.origin("--lstm-plugin"):
        registry.add(RowZeroRecurrence)
    assert registry.registration("mutant_row0").origin == "--lstm-plugin (mutants)"
    with pytest.raises(RegistryError, match="cannot import"):
        registry.load_module("no_such_module_here")


def test_entry_point_naming_a_class(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="row0", value="mutants:RowZeroRecurrence", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == ENTRY_POINT_GROUP else [])
    registry = Registry()
    registry.load_entry_points()
    assert registry.get("mutant_row0") is RowZeroRecurrence
    assert registry.registration("mutant_row0").origin == "entry point row0 = mutants:RowZeroRecurrence"


def test_broken_entry_point_is_named(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="bad", value="no_such_pkg.mod:Thing", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [ep])
    with pytest.raises(RegistryError, match="cannot load entry point bad"):
        Registry().load_entry_points()


def test_installed_package_entry_point_shows_in_list(run_python, tmp_path):
    """A real distribution on sys.path declaring the entry point: listed, no other change."""
    pkg = tmp_path / "mylstm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from impls.fused import FusedLSTM
        from harness import register

        @register
        class MyLSTM(FusedLSTM):
            name = "mine"
            description = "a plugin from another package"
    """))
    dist = tmp_path / "mylstm-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mylstm\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nmine = mylstm\n")
    proc = run_python("-m", "harness", "list", extra_path=[tmp_path])
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines() if l.startswith("mine "))
    assert "entry point mine (mylstm)" in line and "yes:" in line
    for name in BUILTINS:
        assert any(l.startswith(f"{name} ") for l in proc.stdout.splitlines()), name


def test_list_command_shows_the_four_and_plugins(run_python):
    proc = run_python("-m", "harness", "list", "--device", "cpu", "--lstm-plugin", "mutant_plugin")
    assert proc.returncode == 0, proc.stderr
    rows = {l.split()[0]: l for l in proc.stdout.splitlines()[2:]}
    assert BUILTINS <= set(rows)
    assert "--lstm-plugin (mutants)" in rows["mutant_nan"]
    assert "yes: NumPy" in rows["numpy"] and "yes: oneDNN" in rows["cudnn"]
    assert "no: CuPy runs on a CUDA GPU; on the CPU the same algorithm runs as `numpy`" in rows["cupy"]
    bad = run_python("-m", "harness", "list", "--lstm-plugin", "no_such_module_here")
    assert bad.returncode == 2 and "no_such_module_here" in bad.stderr


# -- plugins that fail at import ---------------------------------------------------------------

def test_plugin_raising_at_import_is_named_and_leaves_nothing_registered():
    message = "--lstm-plugin raising_plugin: importing it raised RuntimeError: raising_plugin is broken on purpose"
    for _ in range(2):  # the second try meets the same error, not "registered twice"
        with pytest.raises(RegistryError) as info:
            discover(["raising_plugin"])
        assert str(info.value) == message
        assert "raising_half" not in discover().names()


def test_a_helper_that_did_import_keeps_its_registration(tmp_path, monkeypatch):
    (tmp_path / "helper_under_test.py").write_text(textwrap.dedent("""
        from harness.contract.registry import register
        from impls.fused import FusedLSTM

        @register
        class Helped(FusedLSTM):
            name = "helped_under_test"
            description = "registered by a helper that imports fine"
    """))
    (tmp_path / "uses_helper_under_test.py").write_text("import helper_under_test\nraise RuntimeError('later')\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.setattr(registry_module.REGISTRY, "_entries", dict(discover()._entries))  # restored afterwards
    try:
        with pytest.raises(RegistryError, match="uses_helper_under_test: importing it raised RuntimeError: later"):
            discover(["uses_helper_under_test"])
        assert "helped_under_test" in discover().names()
    finally:
        sys.modules.pop("helper_under_test", None)


@pytest.mark.parametrize("body,message", [
    ("1 / 0", "importing it raised ZeroDivisionError: division by zero"),
    ("raise RuntimeError()", "importing it raised RuntimeError"),
    ("raise ValueError('two\\nlines')", "importing it raised ValueError: two lines"),
    ("import no_such_dependency_here", "cannot import it: No module named 'no_such_dependency_here'"),
    ("def broken(:\n    pass", "importing it raised SyntaxError: "),
])
def test_any_exception_at_plugin_import_is_a_registry_error(body, message, tmp_path, monkeypatch):
    (tmp_path / "badmod_under_test.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(RegistryError) as info:
        Registry().load_module("badmod_under_test")
    assert str(info.value).startswith(f"--lstm-plugin badmod_under_test: {message}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("body,exception", [("raise SystemExit(3)", SystemExit),
                                            ("raise KeyboardInterrupt", KeyboardInterrupt)])
def test_exit_and_interrupt_at_plugin_import_are_not_swallowed(body, exception, tmp_path, monkeypatch):
    (tmp_path / "exiting_under_test.py").write_text(body + "\n")
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(exception):
        Registry().load_module("exiting_under_test")


def test_builtin_module_raising_at_import_is_named(tmp_path, monkeypatch):
    package = tmp_path / "fake_impls_under_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "broken.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.setattr(registry_module, "BUILTIN_PACKAGE", "fake_impls_under_test")
    with pytest.raises(RegistryError, match=r"^built-in module fake_impls_under_test\.broken: "
                                            r"importing it raised RuntimeError: boom$"):
        Registry().load_builtins()


def test_raising_plugin_is_a_usage_error_in_pytest(run_python):
    proc = run_python("-m", "pytest", "suites/test_agreement.py", "--lstm-grid", "smoke", "--lstm-device", "cpu",
                      "--lstm-plugin", "raising_plugin", "-p", "no:cacheprovider")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 4, output
    assert "--lstm-plugin raising_plugin: importing it raised RuntimeError: raising_plugin is broken" in proc.stderr
    assert "INTERNALERROR" not in output and "Traceback" not in output


def test_raising_plugin_is_a_one_line_error_in_list(run_python):
    proc = run_python("-m", "harness", "list", "--device", "cpu", "--lstm-plugin", "raising_plugin")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == ["python -m harness: error: --lstm-plugin raising_plugin: importing it raised "
                                        "RuntimeError: raising_plugin is broken on purpose"]
    assert proc.stdout == ""


def test_raising_plugin_is_a_usage_error_in_the_sequence_cli(run_python, tmp_path):
    proc = run_python("-m", "harness.sequence", "--impl", "fused", "--iters", "1", "--no-plot", "--out",
                      str(tmp_path / "out"), "--lstm-plugin", "raising_plugin")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: --lstm-plugin raising_plugin: importing it raised RuntimeError: raising_plugin is broken" \
        in proc.stderr
    assert not (tmp_path / "out").exists()


# -- implementation names ----------------------------------------------------------------------

def _impl_named(name):
    return type("Named", (WrongGateOrder,), {"name": name, "description": "a name under test"})


@pytest.mark.parametrize("name", ["a|b", "two words", " ", "\t\n", "a/b", "../up", "line\nbreak", "x" * 65,
                                  "_leading", "-leading", ".hidden", "semi;colon", "caf\u00e9"])
def test_unsafe_names_are_refused(name):
    registry = Registry()
    with pytest.raises(RegistryError) as info:
        registry.add(_impl_named(name))
    assert f"implementation name {name!r} is not allowed" in str(info.value)
    assert "1 to 64 characters from A-Z a-z 0-9 _ . + -, the first a letter or digit" in str(info.value)
    assert len(registry) == 0


def _declared_names():
    """Every `name = "..."` class attribute in impls/ and the test plugins, read without importing them."""
    files = [*(ROOT / "impls").glob("*.py"), *(ROOT / "tests").glob("*plugin*.py"), ROOT / "tests" / "mutants.py"]
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and [getattr(t, "id", None) for t in stmt.targets] == ["name"]
                            and isinstance(stmt.value, ast.Constant)):
                        names.add(stmt.value.value)
    return names


def test_existing_names_are_accepted():
    names = _declared_names()
    assert BUILTINS | {"fused_graphs", "tunable", "raising_half", "mutant_row0", "broken_oom"} <= names
    names |= {"x" * 64, "a", "7", "lstm.v2", "cudnn+tf32", "my-lstm"}
    registry = Registry()
    for name in names:
        registry.add(_impl_named(name))
    assert set(registry.names()) == names
