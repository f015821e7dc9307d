"""Registration and discovery of implementations.

Three ways in: the `@register` decorator (in-tree modules under impls/), the entry-point
group ENTRY_POINT_GROUP declared by another installed package, and `--lstm-plugin MODULE`
which imports a module by name. Every registration records where it came from.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import pkgutil
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from harness.contract.impl import Impl

ENTRY_POINT_GROUP = "lstm_harness.impls"
BUILTIN_PACKAGE = "impls"
# Names become pytest ids, file names and markdown table cells: no separators, spaces or pipes.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
NAME_RULE = "1 to 64 characters from A-Z a-z 0-9 _ . + -, the first a letter or digit"


class RegistryError(LookupError):
    """An unknown name, a name registered twice, or a plugin that cannot be loaded."""


@dataclass(frozen=True)
class Registration:
    cls: type[Impl]
    origin: str  # "built-in (impls.fused)", "entry point mine (mypkg.lstm)", "--lstm-plugin (mymod)"

    @property
    def name(self) -> str:
        return self.cls.name


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, Registration] = {}
        self._origin: str | None = None  # set while a discovery step imports a module

    def add(self, cls: type[Impl], origin: str | None = None) -> type[Impl]:
        if not (isinstance(cls, type) and issubclass(cls, Impl)):
            raise RegistryError(f"{cls!r} is not a subclass of harness.Impl")
        for attr in ("name", "description"):
            if not isinstance(getattr(cls, attr, None), str) or not getattr(cls, attr):
                raise RegistryError(f"{cls.__qualname__} must set a non-empty class attribute {attr!r}")
        check_name(cls)
        # A module imported while loading another (a shared helper) is still named by its own module.
        if origin is None and cls.__module__.split(".")[0] == BUILTIN_PACKAGE:
            origin = f"built-in ({cls.__module__})"  # whoever imported it first (a test, a plugin)
        origin = origin or (f"{self._origin} ({cls.__module__})" if self._origin else f"module {cls.__module__}")
        existing = self._entries.get(cls.name)
        if existing is not None:
            if existing.cls is cls:
                return cls  # the same class reached twice (decorator, then its entry point)
            raise RegistryError(
                f"implementation name {cls.name!r} is registered twice: by {existing.origin} "
                f"({existing.cls.__module__}.{existing.cls.__qualname__}) and by {origin} "
                f"({cls.__module__}.{cls.__qualname__}); known names: {', '.join(self.names())}")
        self._entries[cls.name] = Registration(cls, origin)
        return cls

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> type[Impl]:
        return self.registration(name).cls

    def registration(self, name: str) -> Registration:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none registered)"
            raise RegistryError(f"unknown implementation {name!r}; known names: {known}") from None

    def select(self, names: Iterable[str] | None) -> list[Registration]:
        """Registrations for `names` (all when None), in the order given."""
        if names is None:
            return list(self)
        return [self.registration(n) for n in names]

    def __iter__(self) -> Iterator[Registration]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.contextmanager
    def origin(self, origin: str) -> Iterator[None]:
        previous, self._origin = self._origin, origin
        try:
            yield
        finally:
            self._origin = previous

    # -- discovery -------------------------------------------------------------------------

    def load_builtins(self) -> None:
        package = importlib.import_module(BUILTIN_PACKAGE)
        for info in pkgutil.iter_modules(package.__path__):
            module = f"{BUILTIN_PACKAGE}.{info.name}"
            with self.origin("built-in"):
                self._import(module, f"built-in module {module}")

    def load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            origin = f"entry point {ep.name} = {ep.value}"
            with self.origin(f"entry point {ep.name}"):
                try:
                    loaded = ep.load()
                except Exception as exc:
                    raise RegistryError(f"cannot load {origin}: {type(exc).__name__}: {exc}") from exc
            # The entry point may name the class itself, or a module whose decorators ran.
            if isinstance(loaded, type):
                self.add(loaded, origin)

    def load_module(self, module: str) -> None:
        with self.origin("--lstm-plugin"):
            self._import(module, f"--lstm-plugin {module}")

    def _import(self, module: str, what: str) -> None:
        """Import `module`; any failure (not SystemExit or KeyboardInterrupt) becomes a RegistryError
        naming `what`, with what the failed module registered dropped again."""
        before = set(self._entries)
        try:
            importlib.import_module(module)
        except Exception as exc:
            self._drop_unimported(before)
            if isinstance(exc, ImportError):
                raise RegistryError(f"{what}: cannot import it: {one_line(exc) or type(exc).__name__}") from exc
            raise RegistryError(f"{what}: importing it raised {describe(exc)}") from exc

    def _drop_unimported(self, before: set[str]) -> None:
        # Python forgets a module whose import failed, so a second try would meet its classes as
        # "registered twice"; a helper it imported that did succeed stays imported, and registered.
        self._entries = {name: reg for name, reg in self._entries.items()
                         if name in before or reg.cls.__module__ in sys.modules}


def check_name(cls: type[Impl]) -> None:
    if not NAME_PATTERN.fullmatch(cls.name):
        raise RegistryError(f"{cls.__qualname__}: implementation name {cls.name!r} is not allowed; "
                            f"use {NAME_RULE}")


def one_line(exc: BaseException) -> str:
    """The exception's text on one line, so the error stays one line."""
    return " ".join(str(exc).split())


def describe(exc: BaseException) -> str:
    """'RuntimeError: boom', or just 'RuntimeError' when it has no text."""
    return f"{type(exc).__name__}: {one_line(exc)}" if one_line(exc) else type(exc).__name__


REGISTRY = Registry()
_discovered = False


def register(cls: type[Impl]) -> type[Impl]:
    """Class decorator: make an implementation known to the harness."""
    return REGISTRY.add(cls)


def discover(plugins: Iterable[str] = ()) -> Registry:
    """Fill the global registry: built-ins, entry points, then the named plugin modules."""
    global _discovered
    if not _discovered:
        REGISTRY.load_builtins()
        REGISTRY.load_entry_points()
        _discovered = True
    for module in plugins:
        REGISTRY.load_module(module)
    return REGISTRY
