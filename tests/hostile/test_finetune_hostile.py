"""Resume is crash-consistent: a SIGKILL at every write point of `finetune` (backup, commit,
checkpoint, export, embedding cache, run state), then the same command finishes with every
epoch run exactly once and no temporary left. Changed data refuses clearly; bad arguments
write nothing; a diverging loss stops with an error and exports nothing."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from keras_vggres import cli
from keras_vggres._atomic import is_leftover
from keras_vggres.transfer import finetune, report
from keras_vggres.transfer.callbacks import TrainingDivergedError
from keras_vggres.transfer.toydata import make_toy_dataset

SETTINGS = dict(model="resnet18", weights=None, image_size=32, batch_size=8, epochs_head=2,
                epochs_finetune=1, lr=0.05, validation_split=0.25, verbose=0,
                early_stopping_patience=None)
EPOCHS = SETTINGS["epochs_head"] + SETTINGS["epochs_finetune"]

# The child dies by SIGKILL on the N-th `os.replace` whose target matches a pattern: "before"
# leaves the new file half-written under its temporary name (a kill mid-write), "after" kills
# right after the rename (before whatever the writer does next).
KILLER = textwrap.dedent("""
    import fnmatch, os, signal, sys
    pattern, nth, when = sys.argv[3], int(sys.argv[4]), sys.argv[5]
    real_replace, seen = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if fnmatch.fnmatch(os.fspath(dst), pattern):
            seen[0] += 1
            if seen[0] == nth:
                if when == "before":
                    if os.path.isfile(src):
                        with open(src, "r+b") as f:
                            f.truncate(os.path.getsize(src) // 2)
                    os.kill(os.getpid(), signal.SIGKILL)
                real_replace(src, dst, *args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
    from keras_vggres.transfer import finetune
    finetune(sys.argv[1], out_dir=sys.argv[2], **eval(sys.argv[6]))
    sys.exit(3)  # not killed: the pattern never matched often enough
""")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy") / "data", classes=2, per_class=8,
                            size=40, broken=False)


def _kill(toy, out, pattern, nth, when, settings=SETTINGS):
    proc = subprocess.run([sys.executable, "-c", KILLER, toy.root, str(out), pattern, str(nth),
                           when, repr(settings)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-3000:])


def _leftovers(folder):
    return [os.path.join(d, n) for d, dirs, files in os.walk(folder) for n in dirs + files
            if is_leftover(n)]


@pytest.mark.parametrize("pattern, nth, when", [
    ("*/backup/head/epoch-*.weights.h5", 2, "before"),      # kill while writing a backup
    ("*/backup/head/training_metadata.json", 1, "before"),  # weights written, commit not
    ("*/backup/head/epoch-*.weights.h5", 2, "after"),       # between backup and commit
    ("*/best.keras", 1, "before"),                          # the best checkpoint
    ("*/embeddings/*.npz", 1, "before"),                    # the embedding cache
    ("*/model.keras", 1, "before"),                         # the export
    ("*/state.json", 3, "before"),                          # the run state
])
def test_sigkill_at_every_write_point_then_the_same_command_finishes(toy, tmp_path, pattern,
                                                                      nth, when):
    out = tmp_path / "run"
    _kill(toy, out, pattern, nth, when)
    logged_before = {r["epoch"] for r in report.read_metrics(out / "metrics.csv")}
    result = finetune(toy.root, out_dir=out, **SETTINGS)
    assert result.epochs == {"head": 2, "finetune": 1}
    rows = report.read_metrics(result.metrics_path)
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))  # each epoch once
    assert [r["phase"] for r in rows] == ["head", "head", "finetune"]
    # Epochs finished before the kill are not trained again (their rows keep run 1), except
    # at most the one whose backup the kill interrupted.
    retrained = [r["epoch"] for r in rows if r["epoch"] in logged_before and r["run"] != 1]
    assert len(retrained) <= 1 and all(e == max(logged_before) for e in retrained), rows
    assert _leftovers(out) == []
    assert os.path.isfile(result.model_path) and json.load(open(result.run_path))["class_names"]


def test_a_corrupt_backup_is_named_and_the_phase_restarts(toy, tmp_path):
    out = tmp_path / "run"
    _kill(toy, out, "*/backup/head/epoch-*.weights.h5", 2, "after")
    backup = out / "backup" / "head"
    committed = json.loads((backup / "training_metadata.json").read_text())["weights"]
    weights = backup / committed
    weights.write_bytes(weights.read_bytes()[:100])  # truncated behind the commit's back
    with pytest.warns(UserWarning, match=rf"{weights.name}.*SHA-256"):
        result = finetune(toy.root, out_dir=out, **SETTINGS)
    assert [r["epoch"] for r in report.read_metrics(result.metrics_path)] == [1, 2, 3]


def test_changed_data_refuses_then_restart_runs_on_the_new_data(toy, tmp_path):
    data = make_toy_dataset(tmp_path / "data", classes=2, per_class=8, size=40, broken=False)
    out = tmp_path / "run"
    _kill(data, out, "*/backup/head/training_metadata.json", 1, "after")
    new = os.path.join(data.root, data.class_names[0], "added.png")
    Image.new("RGB", (40, 40), (200, 10, 10)).save(new)
    with pytest.raises(ValueError, match=r"data folder changed.*1 files added.*added\.png"
                                         r".*restart=True"):
        finetune(data.root, out_dir=out, **SETTINGS)
    result = finetune(data.root, out_dir=out, restart=True, **SETTINGS)
    assert sum(sum(c) for c in result.summary["counts"].values()) == 17
    assert result.summary["attempts"] == 1


def test_missing_weights_file_writes_nothing_and_the_fixed_command_runs(toy, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", toy.root, "--model", "resnet18", "--image-size", "32", "--epochs", "1",
            "--batch-size", "8", "--out", str(out), "--quiet"]
    assert cli.main(args + ["--weights", str(tmp_path / "nonexistent.h5")]) == 2
    assert "nonexistent.h5" in capsys.readouterr().err and not out.exists()
    assert cli.main(args + ["--weights", "none"]) == 0


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_non_finite_or_negative_learning_rates_are_refused(toy, tmp_path, value, capsys):
    out = tmp_path / "run"
    try:  # argparse refuses non-finite numbers; finetune's own check refuses the rest
        code = cli.main(["finetune", toy.root, "--lr", value, "--out", str(out)])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and "lr" in capsys.readouterr().err
    with pytest.raises(ValueError, match="lr"):
        finetune(toy.root, out_dir=out, **dict(SETTINGS, lr=float(value)))
    assert not out.exists()


def test_a_diverging_loss_stops_the_run_and_exports_nothing(toy, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"became (nan|inf).*phase.*Lower the learning rate"):
        finetune(toy.root, out_dir=out, **dict(SETTINGS, lr=1e30, optimizer="sgd"))
    assert not (out / "model.keras").exists()


def test_a_run_folder_is_used_by_one_process_at_a_time(toy, tmp_path):
    from keras_vggres.transfer.runstate import RunFolderBusyError, RunState

    with RunState(tmp_path / "run", {"model": "resnet18"}):
        with pytest.raises(RunFolderBusyError, match="Another process"):
            finetune(toy.root, out_dir=tmp_path / "run", **SETTINGS)


def test_the_fingerprint_sees_through_symlinked_class_folders(tmp_path):
    from keras_vggres.transfer import fingerprint

    real = make_toy_dataset(tmp_path / "real", classes=2, per_class=2, size=32, broken=False)
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in real.class_names:
        (linked / name).symlink_to(os.path.join(real.root, name), target_is_directory=True)
    (linked / real.class_names[0] / "loop").symlink_to(linked, target_is_directory=True)
    before = fingerprint.folder_files(linked)
    assert len([e for e in before if not e[0].count("loop")]) == 4
    Image.new("RGB", (32, 32)).save(os.path.join(real.root, real.class_names[1], "new.png"))
    after = fingerprint.folder_files(linked)
    assert fingerprint.digest(after) != fingerprint.digest(before)
    assert "1 files added" in fingerprint.describe_changes(before, after)


def test_a_failed_set_up_does_not_bind_the_run_folder(toy, tmp_path):
    """A call that fails before training (here: a file that is no weights file) leaves a
    state file, yet the corrected command runs instead of being refused as another run."""
    bogus = tmp_path / "weights.h5"
    bogus.write_bytes(b"not a weights file")
    with pytest.raises(ValueError):
        finetune(toy.root, out_dir=tmp_path / "run", **dict(SETTINGS, weights=str(bogus)))
    result = finetune(toy.root, out_dir=tmp_path / "run", **dict(SETTINGS, epochs_head=1,
                                                                  epochs_finetune=0))
    assert result.summary["attempts"] == 1


def test_a_refused_resume_releases_the_folder(toy, tmp_path):
    out = tmp_path / "run"
    _kill(toy, out, "*/backup/head/training_metadata.json", 1, "after")
    with pytest.raises(ValueError, match="other settings") as refused:
        finetune(toy.root, out_dir=out, **dict(SETTINGS, lr=0.01))
    assert refused.value is not None  # the traceback (and the RunState) are still alive here
    result = finetune(toy.root, out_dir=out, restart=True, **dict(SETTINGS, lr=0.01))
    assert result.summary["attempts"] == 1


@pytest.mark.parametrize("cache", ["Memory", "dsk", 3])
def test_cache_typos_are_refused_before_anything_is_written(toy, tmp_path, cache):
    with pytest.raises(ValueError, match="cache"):
        finetune(toy.root, out_dir=tmp_path / "run", **dict(SETTINGS, cache=cache))
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob("*-train*"))
