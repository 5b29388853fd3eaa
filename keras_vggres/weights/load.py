"""Load a weight file into a model, all or nothing: legacy HDF5 by layer name, Keras 3 natively."""

from __future__ import annotations

from keras_vggres._checks import check_bool
from keras_vggres.weights import h5, native
from keras_vggres.weights.assign import assign_layer_weights


def load_weights(model, path, skip_mismatch: bool = False, *,
                 allow_nonfinite: bool = False, drop_layers=(), adapt=None) -> None:
    """Load a weight file into ``model``: legacy HDF5 by layer name, Keras 3 files natively.

    Either way the file is untrusted: links out of the file, virtual or external storage,
    unwritten data, non-float data for float weights and non-finite values are refused (an
    `UnsafeWeightsError`, a ValueError), and a failed load leaves the model as it was.

    Args:
        model: a built Keras model.
        path: a legacy ``.h5``/``.hdf5`` weight file (by layer name, all or nothing), or a Keras 3
            ``.keras`` / ``.weights.h5`` / ``.weights.json`` file (checked, then handed to
            ``model.load_weights``, with the model restored if Keras fails half-way).
        skip_mismatch: leave layers that do not match the file as they are (with a warning)
            instead of raising.
        allow_nonfinite: load NaN and infinite values instead of refusing them.
        drop_layers: names of layers a legacy file may hold that the model lacks on purpose
            (the classifier of a full-model file loaded into a no-top model).
        adapt: None, or a function applied to a legacy file's plan before it is matched (the
            first convolution adapted to C != 3 input channels: `weights.channels`).
    """
    path = h5.existing_path(path)
    check_bool("skip_mismatch", skip_mismatch)
    check_bool("allow_nonfinite", allow_nonfinite)
    if path.endswith(native.NATIVE_SUFFIXES):
        if adapt is not None:
            raise ValueError(f"{path!r} is a Keras 3 native file, which loads by structure: it "
                             "cannot be adapted to another number of input channels. Use a "
                             "legacy .h5 file, a .pth file or a weights tag.")
        native.load_native(model, path, skip_mismatch=skip_mismatch,
                           allow_nonfinite=allow_nonfinite)
        return
    with h5.open_h5(path) as f:
        plan = h5.layer_datasets(f, path)  # h5py datasets: checked, then read one at a time
        plan = {name: values for name, values in plan.items() if name not in drop_layers}
        if adapt is not None:
            plan = adapt(plan)
        assign_layer_weights(model, plan, source=path, skip_mismatch=skip_mismatch,
                             allow_nonfinite=allow_nonfinite)
