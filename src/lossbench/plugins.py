"""Losses and models from outside lossbench: registry names, entry points and import strings.

A reference names one object and is resolved in this order:

1. a built-in name (`improved`, `sasrec`): lossbench's own registry;
2. an entry-point name: an installed package registers objects under the group
   `lossbench.losses` or `lossbench.models` (in its pyproject.toml,
   `[project.entry-points."lossbench.losses"]`, `focal-ce = "focal_loss:FOCAL_CE"`);
3. an import string: `package.module:name` (an importable module) or `path/to/file.py:name`
   (one file, loaded on its own, relative paths from the current folder).

Built-in names win over entry points of the same name. Every resolved object comes with a
`Source`: where it came from and the sha256 of its module's source file, which each run
records, so that a result can be traced to the exact code that produced it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

from lossbench.errors import LossbenchError

T = TypeVar("T")
IMPORT_FORMS = "an import string package.module:name or ./file.py:name"


@dataclass(frozen=True)
class Source:
    """Where a loss or model came from; `record()` goes into each run's config.json."""

    name: str  # the reference as given: "improved", "pkg.mod:fn", "./my_loss.py:fn"
    origin: str  # "built-in", "entry point", "module" or "file"
    target: str | None = None  # "module:attribute" or "/path/file.py:attribute" loaded
    path: str | None = None  # the module's source file
    sha256: str | None = None  # of that file, read when the module was loaded
    distribution: str | None = None  # "name version" of the package of an entry point

    def record(self) -> dict[str, str | None]:
        return asdict(self)

    def describe(self) -> str:
        """One short phrase for listings: 'lossbench', 'lossbench-focal 0.1 (focal:FOCAL)',
        'my_loss.py, sha256 c9fba4043e44'."""
        if self.origin == "built-in":
            return "lossbench"
        if self.origin == "entry point":
            return f"{self.distribution or 'a package'} ({self.target})"
        digest = f", sha256 {self.sha256[:12]}" if self.sha256 else ""
        return f"{Path(self.path).name if self.path else self.target}{digest}"


@dataclass(frozen=True)
class Found(Generic[T]):
    value: T
    source: Source


@dataclass(frozen=True)
class PluginKind(Generic[T]):
    """What can be resolved: losses or models."""

    noun: str  # "loss" / "model", in messages
    plural: str  # "losses" / "models"; the entry-point group is `lossbench.<plural>`
    builtins: Mapping[str, T]
    convert: Callable[[object, str], T]  # loaded object -> T, or a LossbenchError naming it
    accepts: Callable[[object], bool]  # could this object be converted (for hints)?

    @property
    def group(self) -> str:
        """The entry-point group plugins register under."""
        return f"lossbench.{self.plural}"


def is_import_string(name: str) -> bool:
    """Registry and entry-point names never hold ':'; import strings always do."""
    return ":" in name


def find(kind: PluginKind[T], name: str) -> Found[T]:
    """Resolve `name` (see the module docstring); unknown names list the valid ones."""
    if name in kind.builtins:
        return Found(kind.builtins[name], Source(name, "built-in"))
    if is_import_string(name):
        loaded, source = load_import_string(name, kind)
        return Found(kind.convert(loaded, name), source)
    point = _entry_points(kind.group, tuple(sys.path)).get(name)
    if point is None:
        raise LossbenchError(unknown_message(kind, name))
    loaded, source = _load_entry_point(point, kind.noun)
    return Found(kind.convert(loaded, name), source)


def unknown_message(kind: PluginKind[Any], name: str) -> str:
    hint = ""
    if name.endswith(".py") or "/" in name:
        hint = f" (name the object in the file: {name}:NAME)"
    names = ", ".join([*kind.builtins, *entry_point_names(kind)])
    return f"unknown {kind.noun} {name!r}{hint}; valid {kind.plural}: {names}, or {IMPORT_FORMS}"


def entry_point_names(kind: PluginKind[Any]) -> list[str]:
    """Entry points of the group that a built-in name does not hide."""
    points = _entry_points(kind.group, tuple(sys.path))
    return [name for name in points if name not in kind.builtins]


def available(kind: PluginKind[T]) -> list[tuple[str, Found[T] | LossbenchError]]:
    """Built-ins, then installed entry points, for listings: a broken entry point, or one a
    built-in name hides, comes with the reason instead."""
    listed: list[tuple[str, Found[T] | LossbenchError]] = [
        (name, Found(value, Source(name, "built-in"))) for name, value in kind.builtins.items()
    ]
    for name, point in _entry_points(kind.group, tuple(sys.path)).items():
        if name in kind.builtins:
            owner = point.dist.name if point.dist is not None else "a package"
            hidden = f"ignored: lossbench has a {kind.noun} of this name ({owner}: {point.value})"
            listed.append((name, LossbenchError(hidden)))
            continue
        try:
            listed.append((name, find(kind, name)))
        except LossbenchError as error:
            listed.append((name, error))
    return listed


def changed_sources(
    saved: Mapping[str, Mapping[str, Any]] | None, current: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Which of `current`'s entries (loss, model) have another source sha256 than `saved`.

    Built-ins have no sha256 on either side; records written before sources were recorded
    count as built-in."""
    saved = saved or {}
    return [
        key
        for key, record in current.items()
        if (saved.get(key) or {}).get("sha256") != record.get("sha256")
    ]


def folder_name(name: str) -> str:
    """A folder name for a reference: a built-in name as it is, './my_loss.py:ce' ->
    'my_loss.py-ce'."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return slug or "unnamed"


def load_import_string(reference: str, kind: PluginKind[Any]) -> tuple[object, Source]:
    """The object `module:attribute` or `file.py:attribute` names, and its source."""
    noun = kind.noun
    location, _, attribute = reference.rpartition(":")
    if not location or not attribute.isidentifier():
        raise LossbenchError(
            f"{noun} {reference!r} is not {IMPORT_FORMS} (NAME: a variable of the module)"
        )
    if location.endswith(".py") or "/" in location or "\\" in location:
        module, path, sha = _file_module(location, reference, noun)
        origin, target = "file", f"{path}:{attribute}"
    else:
        module, path, sha = _import_module(location, reference, noun)
        origin, target = "module", f"{location}:{attribute}"
    loaded = _attribute(module, attribute, reference, kind)
    return loaded, Source(reference, origin, target, path, sha)


def _attribute(module: ModuleType, attribute: str, reference: str, kind: PluginKind[Any]) -> object:
    """`module.attribute`; a missing name lists the module's candidates."""
    namespace = vars(module)
    if attribute in namespace:
        return namespace[attribute]
    candidates = sorted(
        key for key, value in namespace.items() if not key.startswith("_") and kind.accepts(value)
    )
    raise LossbenchError(
        f"{kind.noun} {reference!r}: the module defines no {attribute!r} "
        f"(its {kind.plural}: {', '.join(candidates) or 'none'})"
    )


def _file_module(
    location: str, reference: str, noun: str
) -> tuple[ModuleType, str | None, str | None]:
    path = Path(location).expanduser().resolve()
    try:
        source = path.read_bytes()
    except OSError as error:
        reason = "does not exist" if not path.exists() else f"cannot be read ({error.strerror})"
        raise LossbenchError(f"{noun} file {location} {reason} (from {reference!r})") from None
    sha = hashlib.sha256(source).hexdigest()
    return _exec_file(str(path), sha, source, noun), str(path), sha


_FILE_MODULES: dict[tuple[str, str], ModuleType] = {}


def _exec_file(path: str, sha: str, source: bytes, noun: str) -> ModuleType:
    """Run the file's exact bytes (the ones hashed) as a module; once per (path, content)."""
    key = (path, sha)
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    stem = re.sub(r"\W", "_", Path(path).stem)
    name = f"lossbench_file_{stem}_{sha[:12]}"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=path)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = path
    sys.modules[name] = module  # dataclasses and pickle look modules up by name
    try:
        exec(compile(source, path, "exec"), vars(module))
    except BaseException as error:
        del sys.modules[name]
        if not isinstance(error, Exception):
            raise
        raise LossbenchError(f"loading {noun} file {path} failed: {one_line(error)}") from None
    _FILE_MODULES[key] = module
    return module


def file_modules() -> list[ModuleType]:
    """The modules loaded from `path/to/file.py:name` references so far: importable by no
    other process (an executor that sends their objects elsewhere sends them by value)."""
    return list(_FILE_MODULES.values())


_MODULE_FILES: dict[str, tuple[str | None, str | None]] = {}


def _import_module(
    name: str, reference: str, noun: str
) -> tuple[ModuleType, str | None, str | None]:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name is None or not name.startswith(error.name):
            raise LossbenchError(f"importing {name} failed: {one_line(error)}") from None
        hint = "is the package installed, or its folder on PYTHONPATH?"
        as_file = Path(*name.split(".")).with_suffix(".py")
        if as_file.is_file():
            hint = f"for the file in this folder write ./{as_file}:{reference.rpartition(':')[2]}"
        raise LossbenchError(
            f"{noun} {reference!r}: no module named {error.name!r} ({hint})"
        ) from None
    except Exception as error:
        raise LossbenchError(f"importing {name} failed: {one_line(error)}") from None
    if name not in _MODULE_FILES:  # hashed once, as imported: Python runs a module once
        _MODULE_FILES[name] = _hash_module_file(module)
    path, sha = _MODULE_FILES[name]
    return module, path, sha


def _hash_module_file(module: ModuleType) -> tuple[str | None, str | None]:
    path = vars(module).get("__file__")  # None for namespace packages
    if path is None:
        return None, None
    try:
        return path, hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return path, None


@lru_cache(maxsize=16)
def _entry_points(group: str, _path: tuple[str, ...]) -> dict[str, metadata.EntryPoint]:
    """The group's entry points by name (cached per sys.path: installs show up on a change)."""
    return {point.name: point for point in metadata.entry_points(group=group)}


def _load_entry_point(point: metadata.EntryPoint, noun: str) -> tuple[object, Source]:
    dist = point.dist
    distribution = f"{dist.name} {dist.version}" if dist is not None else None
    label = f"entry point {point.name!r} ({point.value}) of {distribution or 'a package'}"
    try:
        loaded = point.load()
    except Exception as error:
        raise LossbenchError(f"{noun} {label} failed to load: {one_line(error)}") from None
    module_name = point.module
    if module_name not in _MODULE_FILES:
        _MODULE_FILES[module_name] = _hash_module_file(sys.modules[module_name])
    path, sha = _MODULE_FILES[module_name]
    return loaded, Source(point.name, "entry point", point.value, path, sha, distribution)


def one_line(error: BaseException) -> str:
    """'TypeError: message (file.py:12)', the innermost frame of the traceback."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}{where}"
