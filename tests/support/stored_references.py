"""PyTorch's outputs on synthetic torchvision weights, computed once and stored with the tests.

`make_torch_references.py` (needs PyTorch) runs the oracle (`torch_reference.py`) on each
`CASES` entry: the synthetic state dict of `synthetic_checkpoints` for (model, seed), one
seeded input, with or without the classifier. It stores the output in
`tests/data/torch_references/<case>.npz` with a fingerprint of everything that produced it:
this file's `SCRIPT_VERSION`, the case, the oracle's source, every weight's key, dtype, shape
and bytes, and the input's bytes. `load_reference` recomputes the fingerprint from the arrays a
test is about to use and raises `StoredReferenceError` when the file is missing or was made
from anything else, so a stale reference fails instead of passing silently. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tests.support import synthetic_checkpoints

SCRIPT_VERSION = 1
REFERENCE_DIR = synthetic_checkpoints.DATA_DIR
ORACLE_SOURCE = Path(__file__).with_name("torch_reference.py")
REGENERATE = ("regenerate them with `python tests/support/make_torch_references.py` "
              "(needs PyTorch: pip install -e '.[torch]') and commit tests/data/torch_references")
INPUT_SEED = 5


class Case(NamedTuple):
    model_name: str      # torchvision's name
    include_top: bool    # logits of the classifier, else the last feature map (NHWC)
    height: int
    width: int
    seed: int            # of the synthetic weights

    @property
    def name(self):
        return (f"{self.model_name}_{'top' if self.include_top else 'notop'}"
                f"{self.height}x{self.width}_s{self.seed}")


PARITY_MODELS = ("resnet18", "resnet34", "resnet50", "vgg11_bn", "vgg16")
CASES = tuple(  # with the classifier at 224 (VGG's fc1 needs 7x7); without it, an odd size
    Case(model, include_top, *((224, 224) if include_top else (225, 199)), seed=11)
    for model in PARITY_MODELS for include_top in (True, False)
) + (Case("resnet18", False, 64, 64, seed=3),)   # small: loading paths, strides, subprocesses
CASES_BY_NAME = {case.name: case for case in CASES}


class StoredReferenceError(Exception):
    """A stored PyTorch reference is missing, unreadable or was made from other inputs."""


def case_input(case) -> np.ndarray:
    """The case's input image batch, (1, height, width, 3) float32 (NHWC, as Keras takes it)."""
    rng = np.random.default_rng([INPUT_SEED, case.height, case.width])
    return rng.standard_normal((1, case.height, case.width, 3), dtype=np.float32)


def _sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint_parts(case, state, x) -> dict[str, str]:
    """What a reference depends on, each part hashed separately (errors say which changed)."""
    weights, layout = hashlib.sha256(), []
    for key, array in state.items():
        array = np.asarray(array, order="C")
        layout.append([key, array.dtype.str, list(array.shape)])
        weights.update(memoryview(array).cast("B") if array.size else b"")
    return {
        "script_version": str(SCRIPT_VERSION),
        "case": json.dumps(case._asdict(), sort_keys=True),
        "oracle_source": _sha256(ORACLE_SOURCE.read_bytes()),
        "state_dict_layout": _sha256(json.dumps(layout).encode()),
        "weights": weights.hexdigest(),
        "input": _sha256(np.ascontiguousarray(x, np.float32).tobytes()),
    }


def reference_path(case, folder=None) -> Path:
    return Path(folder or REFERENCE_DIR) / f"{case.name}.npz"


def save_reference(case, state, x, output, *, torch_version, folder=None) -> Path:
    """Store PyTorch's `output` for `case` with the fingerprint of `state` and `x`."""
    meta = {"case": case.name, "parts": fingerprint_parts(case, state, x),
            "torch_version": torch_version}
    path = reference_path(case, folder)
    np.savez_compressed(path, output=np.asarray(output, np.float32),
                        meta=np.array(json.dumps(meta, sort_keys=True)))
    return path


def read_meta(path) -> dict:
    with np.load(path) as data:
        return json.loads(str(data["meta"]))


def load_reference(case, state, x, *, folder=None) -> np.ndarray:
    """PyTorch's stored output for `case`, after checking it was made from `state` and `x`.

    Raises:
        StoredReferenceError: the file is missing or unreadable, or any fingerprint part
            differs (the message names the parts and how to regenerate).
    """
    path = reference_path(case, folder)
    if not path.is_file():
        raise StoredReferenceError(f"The PyTorch reference {path} for case {case.name} is "
                                   f"missing; {REGENERATE}.")
    try:
        with np.load(path) as data:
            output, meta = data["output"], json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as err:
        raise StoredReferenceError(f"The PyTorch reference {path} is unreadable ({err}); "
                                   f"{REGENERATE}.") from err
    expected = fingerprint_parts(case, state, x)
    stale = sorted(part for part in expected if meta.get("parts", {}).get(part) != expected[part])
    if stale or meta.get("case") != case.name:
        raise StoredReferenceError(f"The PyTorch reference {path} is stale: it was made from "
                                   f"other {', '.join(stale) or 'case'} than this test uses; "
                                   f"{REGENERATE}.")
    return output
