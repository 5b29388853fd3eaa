"""Compute the stored PyTorch references once: `python tests/support/make_torch_references.py`.

Needs PyTorch (`pip install -e '.[torch]'`), not torchvision: the oracle is
`tests/support/torch_reference.py`. Writes into `tests/data/torch_references/`:

- `state_dict_shapes.json`: every torchvision model's state-dict keys and shapes, read off the
  oracle on the meta device (the layout `synthetic_checkpoints` fills with seeded values);
- `<case>.npz` for each `stored_references.CASES` entry: the oracle's output on the synthetic
  weights and the case input, with the fingerprint of what produced it.

`--check` recomputes everything and compares it with the stored files instead of writing
(exit status 1 on any difference). Run it after changing the oracle, a case, the synthetic
weights or `SCRIPT_VERSION`, and commit the folder (a few hundred KB).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.support import stored_references, synthetic_checkpoints, torch_reference  # noqa: E402
from tests.support.numerics import rel_diff  # noqa: E402

CHECK_TOLERANCE = 1e-5  # PyTorch today vs the stored numbers (float32 kernels may differ a little)


def oracle_shapes() -> dict[str, dict[str, list]]:
    """``{model: {key: shape}}`` for every torchvision ResNet and VGG the oracle defines."""
    names = (list(torch_reference.VGGS) + [f"{name}_bn" for name in torch_reference.VGGS]
             + list(torch_reference.RESNETS))
    return {name: {key: list(shape)
                   for key, shape in torch_reference.meta_state_dict_shapes(name).items()}
            for name in names}


@torch.no_grad()
def torch_output(case, state, x) -> np.ndarray:
    """The oracle's output for `case` on `state` (NumPy arrays) and `x` (NHWC)."""
    net = torch_reference.build(case.model_name)
    net.load_state_dict({key: torch.from_numpy(np.array(value)) for key, value in state.items()},
                        strict=True)
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    if case.include_top:
        return net(images).numpy()
    return net.features(images).permute(0, 2, 3, 1).contiguous().numpy()


def _case_arrays(case):
    return (synthetic_checkpoints.synthetic_state_dict(case.model_name, case.seed),
            stored_references.case_input(case))


def write_all(folder):
    folder.mkdir(parents=True, exist_ok=True)
    shapes_file = folder / synthetic_checkpoints.SHAPES_FILE.name
    shapes_file.write_text(json.dumps(oracle_shapes(), indent=0) + "\n")
    synthetic_checkpoints._all_shapes.cache_clear()
    for case in stored_references.CASES:
        state, x = _case_arrays(case)
        path = stored_references.save_reference(case, state, x, torch_output(case, state, x),
                                                torch_version=torch.__version__, folder=folder)
        print(f"{path.name}: {path.stat().st_size:,} bytes")
    stale = sorted({p.name for p in folder.glob("*.npz")}
                   - {f"{case.name}.npz" for case in stored_references.CASES})
    for name in stale:
        (folder / name).unlink()
        print(f"removed {name} (no such case)")


def check_all(folder) -> list[str]:
    """Differences between the stored files and what PyTorch computes now."""
    problems = []
    shapes_file = folder / synthetic_checkpoints.SHAPES_FILE.name
    if json.loads(shapes_file.read_text()) != oracle_shapes():
        problems.append(f"{shapes_file.name}: differs from the oracle's state dicts")
    for case in stored_references.CASES:
        state, x = _case_arrays(case)
        try:
            stored = stored_references.load_reference(case, state, x, folder=folder)
        except stored_references.StoredReferenceError as err:
            problems.append(str(err))
            continue
        difference = rel_diff(torch_output(case, state, x), stored)
        if difference > CHECK_TOLERANCE:
            problems.append(f"{case.name}: PyTorch now differs by {difference:.2e} relative")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the stored files instead of writing them")
    args = parser.parse_args(argv)
    folder = stored_references.REFERENCE_DIR
    if not args.check:
        write_all(folder)
        return 0
    problems = check_all(folder)
    print("\n".join(problems) or "all stored references match PyTorch")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
