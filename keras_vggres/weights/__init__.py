"""Weights: the manifest, verified downloads, HDF5 loading by layer name, torchvision conversion.

Re-exports are lazy so that `keras_vggres.weights.download` stays importable without Keras.
"""

import importlib

_EXPORTS = {
    "keras_vggres.weights.load": ("load_weights",),
    "keras_vggres.weights.h5": ("save_weights_h5",),
    "keras_vggres.weights.refusals": ("UnsafeWeightsError",),
    "keras_vggres.weights.manifest": ("list_weights", "get_weights"),
    "keras_vggres.weights.download": ("fetch", "cache_dir"),
    "keras_vggres.weights.cache": ("verify_cache",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'keras_vggres.weights' has no attribute {name!r}")
