"""Which model families exist: the entry-point group `dhgen.models`, read the way fsspec reads its filesystems.

Every family, built-in or third-party, is an entry point `name = "package.module:attribute"` whose attribute
is a `ModelFamily` instance (or a class, instantiated once). dhgen registers its own families in its
pyproject.toml exactly as a plugin does, so nothing outside a family's module names it. A family's module is
imported only when it is chosen (or listed), and one that fails to import is remembered with its error: it costs
only its own users (`--model NAME` names the error and exits 2; `dhgen models` and `dhgen doctor` list it).
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass
from importlib import metadata

from dhgen.errors import UsageError
from dhgen.models.protocol import ModelFamily

log = logging.getLogger(__name__)

GROUP = "dhgen.models"
OWN_DISTRIBUTION = "dhgen"
BUILT_IN = "built-in"


@dataclass(frozen=True)
class FamilyEntry:
    """A registered family: where it comes from, and the family itself or why it could not be loaded."""

    name: str  # what --model takes
    target: str  # the entry point's value, "package.module:attribute": the family's dotted name
    source: str  # "built-in" or "package==version"
    family: ModelFamily | None = None
    error: str | None = None  # why importing it failed (then family is None)

    @property
    def version(self) -> str:
        """The version of what provides it (dhgen's own for a built-in): part of every input fingerprint."""
        return self.source.partition("==")[2] or _own_version()


def names() -> list[str]:
    """Every registered family name, built-ins first, without importing any of them."""
    return list(_entry_points())


def entry(name: str) -> FamilyEntry:
    """The family registered as `name`, imported (once per process). A name not seen is looked for again first:
    a long-lived process (a Ray worker, the service) may predate the package that registers it."""
    points = _entry_points()
    if name not in points:
        rescan()
        points = _entry_points()
    if name not in points:
        raise UsageError(f"unknown model {name!r}", hint=f"choose one of: {', '.join(points)} (`dhgen models`)")
    return _load(name)


def entries() -> list[FamilyEntry]:
    """Every registered family, each imported (a broken one carries its error)."""
    return [_load(name) for name in _entry_points()]


def get_family(name: str) -> ModelFamily:
    """The family for `--model name`; `UsageError` for a name nobody registered or a plugin that fails to import."""
    found = entry(name)
    if found.family is None:
        raise UsageError(
            f"model {name!r} ({found.target}, from {found.source}) cannot be loaded: {found.error}",
            hint=f"reinstall or fix {found.source}, or choose another model (`dhgen models` lists them)",
        )
    return found.family


def describe(found: FamilyEntry) -> dict:
    """A family as `dhgen models --json` and `dhgen doctor` show it (a broken one with its error)."""
    family = found.family
    if family is None:
        return {"name": found.name, "source": found.source, "family": found.target, "error": found.error}
    return {
        "name": found.name,
        "source": found.source,
        "family": found.target,
        "backends": list(family.backends or (family.backend,)),
        "checkpoint": family.needs_checkpoint,
        "gpu": family.gpu,
        "description": family.description,
        "error": None,
    }


def describe_line(found: FamilyEntry) -> str:
    """One line of `dhgen models`, the name first."""
    d = describe(found)
    if d["error"]:
        return f"{d['name']:<12} {d['source']:<20} BROKEN: {d['error']}"
    backends = "/".join(d["backends"])
    checkpoint = "checkpoint: " + ("yes" if d["checkpoint"] else "no")
    return f"{d['name']:<12} {d['source']:<20} {backends:<18} {checkpoint:<16} gpu: {d['gpu']:<9} {d['description']}"


def rescan() -> None:
    """Forget what was found and imported, so the next look sees packages installed since (a long-lived process)."""
    _entry_points.cache_clear()
    _load.cache_clear()


@functools.cache
def _entry_points() -> dict[str, tuple[metadata.EntryPoint, str]]:
    """name -> (entry point, source), built-ins first; a plugin cannot take a built-in's name."""
    found: dict[str, tuple[metadata.EntryPoint, str]] = {}
    plugins = []
    for point in metadata.entry_points(group=GROUP):
        dist = point.dist
        if dist is not None and dist.name == OWN_DISTRIBUTION:
            found.setdefault(point.name, (point, BUILT_IN))
        else:
            plugins.append((point, f"{dist.name}=={dist.version}" if dist is not None else "unknown package"))
    for point, source in sorted(plugins, key=lambda p: p[0].name):
        if point.name in found:
            log.warning(
                "model %r from %s is ignored: the name is taken by %s", point.name, source, found[point.name][1]
            )
            continue
        found[point.name] = (point, source)
    return found


@functools.cache
def _load(name: str) -> FamilyEntry:
    point, source = _entry_points()[name]
    try:
        family = point.load()
        if isinstance(family, type):
            family = family()
        if not isinstance(family, ModelFamily):
            raise TypeError(f"{point.value} is a {type(family).__name__}, not a dhgen.models.ModelFamily")
    except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, never fatal for the others
        log.debug("model family %s failed to load", name, exc_info=True)
        return FamilyEntry(name, point.value, source, error=f"{type(exc).__name__}: {exc}")
    if family.name != name:
        family.name = name  # what --model called it: the name messages and records use
    return FamilyEntry(name, point.value, source, family)


@functools.cache
def _own_version() -> str:
    try:
        return metadata.version(OWN_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return importlib.import_module("dhgen").__version__
