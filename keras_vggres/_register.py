"""`import keras_vggres` is enough to load saved files that name our Keras objects.

Keras finds custom classes (an optimised `InferenceModel`, the older `ImageNetPreprocessing`
layer, the `WarmupCosine` schedule in a checkpoint's optimizer) only once they are registered,
and registering them needs Keras. Importing Keras costs seconds (TensorFlow), so nothing is
imported here: when Keras is already loaded, the objects are registered at once; otherwise a
one-shot import hook registers them the moment Keras finishes importing. Stdlib only.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

KERAS = "keras"
OBJECTS_MODULE = "keras_vggres._keras_objects"


def install():
    """Register now if Keras is loaded, else when it is (idempotent)."""
    if KERAS in sys.modules:
        _register()
    elif not any(isinstance(finder, _AfterKerasImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterKerasImport())


def _register():
    try:
        importlib.import_module(OBJECTS_MODULE)
    except Exception as err:  # never break the user's `import keras`
        warnings.warn(f"keras_vggres could not register its Keras objects ({err}); files "
                      "naming them will not load.", stacklevel=2)


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Finds the real `keras` spec and wraps its loader to register after it has run."""

    def find_spec(self, name, path=None, target=None):
        if name != KERAS:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from recursing
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _register()

    def __getattr__(self, name):  # resource readers, is_package, ... of the real loader
        return getattr(self._loader, name)
