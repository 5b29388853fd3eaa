"""torchvision-shaped state dicts of seeded random weights, and `.pth` files of them, without torch.

Keys, order and shapes are torchvision's, read from `tests/data/torch_references/
state_dict_shapes.json`, which `make_torch_references.py` writes from the PyTorch oracle
(`torch_reference.py`); nothing here reads a table of the package. Values depend only on the
seed and the key (one NumPy generator per key), follow torchvision's naming conventions
(conv / linear weights He-scaled, BatchNorm with non-trivial statistics) and keep activations
O(1), so the same state dict comes out with or without PyTorch, in any order of calls.
"""

from __future__ import annotations

import collections
import functools
import json
import zlib
from pathlib import Path

import numpy as np

from tests.support.pth_writer import save_state_dict

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "torch_references"
SHAPES_FILE = DATA_DIR / "state_dict_shapes.json"
BN_COUNTER = "num_batches_tracked"


@functools.lru_cache(maxsize=None)
def _all_shapes():
    with open(SHAPES_FILE) as f:
        return json.load(f)


def state_dict_shapes(model_name) -> dict[str, tuple]:
    """``{key: shape}`` of torchvision's `model_name` state dict, in its order."""
    return {key: tuple(shape) for key, shape in _all_shapes()[model_name].items()}


def model_names() -> tuple[str, ...]:
    """The torchvision models whose state dict shapes are stored."""
    return tuple(_all_shapes())


def synthetic_tensor(key, shape, seed) -> np.ndarray:
    """The value of one state-dict entry, from its key's conventions and ``(seed, key)``."""
    if key.endswith(BN_COUNTER):
        return np.full(shape, 7, np.int64)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    values = rng.random(shape, dtype=np.float32)   # uniform [0, 1), then shifted / scaled
    if key.endswith(".running_var") or (key.endswith(".weight") and len(shape) == 1):
        values += np.float32(0.5)                  # BatchNorm variance and gamma in [0.5, 1.5)
    elif key.endswith(".weight"):                  # conv / linear: He-uniform over the fan-in
        limit = np.float32((6.0 / int(np.prod(shape[1:]))) ** 0.5)
        values *= 2 * limit
        values -= limit
    else:                                          # biases, BatchNorm beta and running mean
        values *= np.float32(0.2)
        values -= np.float32(0.1)
    return values


def synthetic_state_dict(model_name, seed) -> collections.OrderedDict:
    """torchvision's `model_name` state dict filled with seeded values (`synthetic_tensor`)."""
    return collections.OrderedDict(
        (key, synthetic_tensor(key, shape, seed))
        for key, shape in state_dict_shapes(model_name).items())


def write_checkpoint(model_name, path, seed=0) -> collections.OrderedDict:
    """Write `synthetic_state_dict(model_name, seed)` to `path` as torch.save would; return it."""
    state = synthetic_state_dict(model_name, seed)
    save_state_dict(state, path)
    return state
