"""Shared test setup: quiet TensorFlow logs, keep every test offline and its caches private."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _private_caches(tmp_path_factory, monkeypatch):
    """No test may read or fill the user's real caches, or reach a weights host.

    Offline mode is the default; tests of the downloader turn it off (delenv) and talk only
    to their own 127.0.0.1 server.
    """
    home = tmp_path_factory.mktemp("keras_home")
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("KERAS_VGGRES_HOME", raising=False)
    monkeypatch.setenv("KERAS_VGGRES_OFFLINE", "1")
    monkeypatch.delenv("KERAS_VGGRES_MIRROR", raising=False)
    monkeypatch.delenv("KERAS_VGGRES_MANIFEST", raising=False)
