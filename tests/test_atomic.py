"""keras_vggres._atomic.replacing: outputs appear whole or not at all."""

import os

import pytest

from keras_vggres._atomic import replacing


def _siblings(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_success_replaces_the_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with replacing(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp != str(target)
        with open(tmp, "w") as f:
            f.write("new")
        assert target.read_text() == "old"             # nothing visible before the block ends
    assert target.read_text() == "new"
    assert _siblings(tmp_path) == ["out.txt"]


def test_failure_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with replacing(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert _siblings(tmp_path) == ["out.txt"]


def test_folders_are_replaced_whole(tmp_path):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "stale.pb").write_text("x")
    with replacing(target) as tmp:
        os.makedirs(tmp)
        open(os.path.join(tmp, "saved_model.pb"), "w").close()
    assert sorted(os.listdir(target)) == ["saved_model.pb"]
    with pytest.raises(ValueError):
        with replacing(target) as tmp:
            os.makedirs(tmp)
            raise ValueError("export failed")
    assert sorted(os.listdir(target)) == ["saved_model.pb"]
    assert _siblings(tmp_path) == ["saved_model"]


def test_a_folder_that_cannot_be_moved_is_kept(tmp_path, monkeypatch):
    """Replacing "." fails at the rename; the folder and its files must survive that."""
    (tmp_path / "precious.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError):
        with replacing(".") as tmp:
            os.makedirs(tmp)
    assert _siblings(tmp_path) == ["precious.txt"]


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    target = tmp_path / "saved_model"
    target.mkdir()
    (target / "saved_model.pb").write_text("old")
    real_rename = os.rename

    def rename(src, dst):
        if os.fspath(dst) == os.fspath(target) and "saved_model.pb" not in os.listdir(src):
            raise OSError("device busy")  # the new folder cannot move in; the old one can
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="device busy"):
        with replacing(target) as tmp:
            os.makedirs(tmp)
            open(os.path.join(tmp, "variables"), "w").close()
    assert (target / "saved_model.pb").read_text() == "old"
    assert _siblings(tmp_path) == ["saved_model"]


def test_a_trailing_slash_names_the_same_folder(tmp_path):
    target = tmp_path / "saved_model"
    for content in ("first", "second"):  # new, then replacing the earlier one
        with replacing(str(target) + "/") as tmp:
            os.makedirs(tmp)
            (tmp_path / os.path.basename(tmp) / "saved_model.pb").write_text(content)
        assert (target / "saved_model.pb").read_text() == content
        assert _siblings(tmp_path) == ["saved_model"]


@pytest.mark.parametrize("name, suffix", [("best.weights.h5", ".weights.h5"),
                                          ("model.keras", ".keras"), ("plain", "")])
def test_suffix_is_kept_at_the_end_of_the_temporary_name(tmp_path, name, suffix):
    with replacing(tmp_path / name, suffix=suffix) as tmp:
        assert tmp.endswith(".tmp" + suffix)
        assert os.path.basename(tmp).startswith(name[: len(name) - len(suffix)] + ".")
        open(tmp, "w").close()
    assert _siblings(tmp_path) == [name]
