"""Progress where people work: a live bar in a terminal or a notebook, quiet when asked or in CI."""

import io
import sys
import types

import pytest

from keras_vggres._progress import Progress, interactive, resolve_verbose
from keras_vggres.transfer import hygiene
from keras_vggres.transfer.toydata import make_toy_dataset


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("KERAS_VGGRES_QUIET", raising=False)
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    return monkeypatch


def test_auto_is_live_on_a_terminal_and_in_a_notebook(clean_env):
    assert interactive(_Terminal()) and not interactive(io.StringIO())  # a pipe / CI log file
    clean_env.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert interactive(io.StringIO())  # Jupyter's streams are no TTY, yet render "\r"


@pytest.mark.parametrize("env", ["CI", "KERAS_VGGRES_QUIET"])
def test_auto_is_quiet_under_ci_or_when_asked(clean_env, env):
    clean_env.setenv(env, "1")
    assert resolve_verbose("auto", _Terminal()) == 0


def test_bar_lines_and_silence(clean_env):
    stream = _Terminal()
    with Progress("Embedding", 4, verbose="auto", unit="images", stream=stream) as bar:
        for done in range(1, 5):
            bar.update(done)
    text = stream.getvalue()
    assert text.startswith("\rEmbedding: 1/4 images") and text.count("\r") >= 2  # redrawn in place
    assert text.endswith("\n") and "Embedding: 4/4 images 100%" in text
    quiet = _Terminal()
    with Progress("Embedding", 4, verbose=0, stream=quiet) as bar:
        bar.update(4)
    assert quiet.getvalue() == ""
    summary = io.StringIO()
    with Progress("Embedding", 4, verbose=2, unit="images", stream=summary) as bar:
        bar.update(2)
        bar.update(4)
    assert summary.getvalue().count("\n") == 1 and "\r" not in summary.getvalue()


def test_the_folder_scan_shows_progress(tmp_path, capsys):
    toy = make_toy_dataset(tmp_path / "d", classes=2, per_class=3, size=32, broken=False)
    hygiene.scan_folder(toy.root, verbose=1)
    assert "Scanning images: 6/6 files 100%" in capsys.readouterr().out
    hygiene.scan_folder(toy.root, verbose=0)
    assert capsys.readouterr().out == ""
