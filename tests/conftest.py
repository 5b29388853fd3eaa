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


@pytest.fixture
def online_downloads(monkeypatch):
    """Online against 127.0.0.1 only: no offline switch, mirror or env limits leaking in, a
    short timeout and a tiny retry backoff."""
    from keras_vggres.weights import _http, _limits

    for var in ("KERAS_VGGRES_OFFLINE", "KERAS_VGGRES_MIRROR", "KERAS_VGGRES_QUIET",
                "KERAS_VGGRES_HOME", _limits.MAX_MIB_ENV, _limits.MIN_RATE_ENV,
                _limits.RATE_WINDOW_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KERAS_VGGRES_TIMEOUT", "5")
    monkeypatch.setattr(_http, "BACKOFF_BASE", 0.01)


@pytest.fixture
def server():
    """A local HTTP server on 127.0.0.1 serving the bodies a test adds (faults on request)."""
    from tests.support.http_server import FaultyServer

    srv = FaultyServer()
    yield srv
    srv.close()
