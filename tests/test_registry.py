import importlib.metadata
import textwrap

import pytest
from mutants import RowZeroRecurrence, WrongGateOrder

from harness.impl import Impl
from harness.registry import ENTRY_POINT_GROUP, Registry, RegistryError, discover

BUILTINS = {"cudnn", "fused", "modular", "cupy"}


def test_builtins_are_registered_with_their_origin():
    registry = discover()
    assert BUILTINS <= set(registry.names())
    assert registry.registration("fused").origin == "built-in (impls.fused)"
    assert registry.registration("cupy").origin == "built-in (impls.cupy_lstm)"
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
    assert "yes: NumPy" in rows["cupy"] and "yes: oneDNN" in rows["cudnn"]
    bad = run_python("-m", "harness", "list", "--lstm-plugin", "no_such_module_here")
    assert bad.returncode == 2 and "no_such_module_here" in bad.stderr
