"""`keras-vggres` sub-commands and the README's example, run as a user would (offline)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from keras_vggres import cli, registry
from keras_vggres.weights import h5, manifest

REPO = Path(__file__).resolve().parents[1]


def _fake_weights_manifest(tmp_path, monkeypatch, body):
    name = "tiny_weights.h5"
    record = {"name": name, "url": "https://example.invalid/" + name, "size": len(body),
              "md5": hashlib.md5(body).hexdigest()}
    doc = {"schema": 1, "models": {"resnet18": {"default": "tv1", "tags": {"tv1": {
        "source": "keras", "format": "keras-h5", "variant": None,
        "files": {"top": record, "notop": record}, "preprocess": "torch",
        "transform": {"resize": 256, "crop": 224, "interpolation": "bilinear"},
        "metrics": {"top1": None, "top5": None}, "params": None, "gflops": None,
        "license": "test"}}}}}
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    monkeypatch.setenv("KERAS_VGGRES_MANIFEST", str(tmp_path / "manifest.json"))
    manifest.reload_manifest()
    return name


def test_models_lists_every_model(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in registry.MODELS:
        assert f"\n{name} " in out
    assert "138,357,544" in out


def test_weights_lists_tags_and_cache_state(capsys):
    assert cli.main(["weights", "resnet50"]) == 0
    out = capsys.readouterr().out
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in out
    assert "tv2" in out and "80.858" in out and "[-]" in out


def test_download_offline_names_file_folder_and_url(capsys):
    assert cli.main(["download", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and "download.pytorch.org" in err and "folder" in err


def test_download_from_mirror_then_verify_and_repair(tmp_path, monkeypatch, capsys):
    body = b"weights" * 1000
    name = _fake_weights_manifest(tmp_path, monkeypatch, body)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / name).write_bytes(body)
    monkeypatch.setenv("KERAS_VGGRES_MIRROR", str(mirror))
    assert cli.main(["download", "resnet18", "--quiet"]) == 0
    cached = Path(capsys.readouterr().out.split(": ", 1)[1].strip())
    assert cached.read_bytes() == body

    assert cli.main(["verify"]) == 0
    cached.write_bytes(b"corrupt")
    assert cli.main(["verify"]) == 1
    assert "BAD" in capsys.readouterr().out
    assert cli.main(["verify", "--delete"]) == 0
    assert not cached.exists()


def test_convert_writes_a_loadable_h5(tmp_path, capsys):
    from tests.support.synthetic_checkpoints import write_checkpoint

    write_checkpoint("resnet18", tmp_path / "r18.pth")
    out = tmp_path / "r18.h5"
    assert cli.main(["convert", str(tmp_path / "r18.pth"), "--model", "resnet18",
                     "--out", str(out)]) == 0
    layers = h5.read_weight_file(out)
    assert "conv1_conv" in layers and "predictions" in layers


def test_classify_with_random_weights_says_so(capsys):
    images = sorted(str(p) for p in (REPO / "examples" / "images").glob("*.jpg"))[:2]
    assert cli.main(["classify", *images, "--model", "resnet18", "--weights", "none",
                     "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "random" in out
    assert out.count("\n  ") == 6  # 3 classes for each of 2 images


def test_readme_example_runs_offline_and_says_predictions_are_random():
    result = subprocess.run([sys.executable, str(REPO / "examples" / "classify_images.py"),
                             "--model", "resnet18"], capture_output=True, text=True,
                            timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not available" in result.stdout and "RANDOM" in result.stdout
    assert result.stdout.count("(true: ") == 12


def test_classify_optimized_and_under_a_strategy_gives_the_same_answers(capsys):
    images = sorted(str(p) for p in (REPO / "examples" / "images").glob("*.jpg"))[:2]
    base = ["classify", *images, "--model", "resnet18", "--weights", "none", "--top", "3",
            "--batch-size", "1"]
    outputs = []
    for extra in ([], ["--optimize"], ["--strategy", "none", "--optimize"]):
        keras.utils.set_random_seed(7)                     # same random weights each time
        assert cli.main(base + extra) == 0
        outputs.append(capsys.readouterr().out)
    plain = [line.split()[1:] for line in outputs[0].splitlines() if line.startswith("  ")]
    for out in outputs[1:]:
        assert [line.split()[1:] for line in out.splitlines() if line.startswith("  ")] == plain
    with pytest.raises(SystemExit):
        cli.main(base[:-1] + ["0"])
    assert "--batch-size: must be an integer >= 1; received '0'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option, kind", [
    (["extract", "x.png", "--out", "{dir}"], "--out", "must be a file path, but"),
    (["predict", "run", "x.png", "--out", "{dir}"], "--out", "must be a file path, but"),
    (["compare", "vgg11", "--no-measure", "--plot", "{dir}"], "--plot", "must be a file path"),
    (["convert", "x.pth", "--model", "resnet18", "--out", "{dir}"], "--out", "must be a file"),
    (["finetune", "data", "--out", "{file}"], "--out", "must be a folder, but"),
    (["gradcam", "x.png", "--model", "resnet18", "--out", "{file}"], "--out", "must be a folder"),
])
def test_output_of_the_wrong_kind_is_refused_before_any_work(tmp_path, capsys, argv, option,
                                                             kind):
    """An output path where a folder (or a file) already is fails at parsing, in one line,
    not after the work with an errno naming a temporary file."""
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("keep")
    argv = [a.format(dir=tmp_path / "adir", file=tmp_path / "afile") for a in argv]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {option}: {kind}" in err and ".tmp" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]
    assert (tmp_path / "afile").read_text() == "keep" and not any((tmp_path / "adir").iterdir())
