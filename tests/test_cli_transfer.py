"""`keras-vggres finetune` and `keras-vggres extract`, run in-process on tiny offline inputs."""

from pathlib import Path

import keras
import numpy as np
import pytest

from keras_vggres import cli
from keras_vggres.transfer.toydata import make_toy_dataset

REPO = Path(__file__).resolve().parents[1]
FAST = ["--model", "resnet18", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
        "--weights", "none", "--strategy", "none", "--quiet"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data", classes=3, per_class=8,
                            size=32)


def test_finetune_writes_the_run_folder(toy, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["finetune", str(toy.root), *FAST, "--out", str(out)]) == 0
    for name in ("model.keras", "saved_model", "metrics.csv"):
        assert (out / name).exists(), name
    assert "model.keras" in capsys.readouterr().out or (out / "summary.json").exists()


def test_finetune_mixed_bfloat16_restores_the_global_policy(toy, tmp_path):
    assert keras.mixed_precision.global_policy().name == "float32"
    out = tmp_path / "bf16"
    assert cli.main(["finetune", str(toy.root), *FAST, "--epochs-finetune", "0",
                     "--precision", "mixed_bfloat16", "--out", str(out)]) == 0
    assert (out / "model.keras").exists()
    assert keras.mixed_precision.global_policy().name == "float32"


def test_extract_sample_images(tmp_path, capsys):
    out = tmp_path / "feats.npz"
    assert cli.main(["extract", str(REPO / "examples" / "images"), "--model", "resnet18",
                     "--weights", "none", "--image-size", "64", "--out", str(out)]) == 0
    with np.load(out) as npz:
        assert npz["features"].shape == (12, 512)
        assert len(npz["paths"]) == 12 and (npz["labels"] == -1).all()
    assert "12 embeddings" in capsys.readouterr().out


def test_bad_strategy_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["finetune", "data", "--strategy", "cluster"])
    assert exc.value.code == 2
    assert "--strategy" in capsys.readouterr().err


def test_strategy_and_precision_choices_match_distribute():
    """The parser takes its choices from the lists distribute checks (one list, no copy)."""
    from keras_vggres import distribute

    finetune = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices.items()
                    if a[0] == "finetune")[1]
    choices = {a.dest: a.choices for a in finetune._actions}
    assert choices["strategy"] is distribute.STRATEGY_KINDS
    assert choices["precision"] is distribute.PRECISIONS
