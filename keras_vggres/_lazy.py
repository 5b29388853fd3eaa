"""Lazy re-exports for package `__init__` modules: a name's module is imported on first use."""

from __future__ import annotations

import importlib


def lazy_exports(namespace, exports, submodules=()):
    """`(__all__, __getattr__, __dir__)` for a package re-exporting `exports` lazily.

    Keeps `import keras_vggres` (and `keras_vggres.models.specs`) from importing Keras until a
    name that needs it is used; a resolved name is cached in the package's `namespace`.

    Args:
        namespace: the package's `globals()`.
        exports: `{module name: (names it provides, ...)}`.
        submodules: names of sub-packages reachable as attributes without an import
            (`keras_vggres.transfer.load_run` after a bare `import keras_vggres`).
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name):
        if name in submodules:
            return importlib.import_module(f"{namespace['__name__']}.{name}")
        if name in where:
            value = getattr(importlib.import_module(where[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(where) | set(submodules))

    return list(where), __getattr__, __dir__
