"""Shared test setup: quiet TensorFlow logs, keep every test offline and its caches private,
and run the tests of optional dependencies (PyTorch, JAX, tf-keras) only where they are
installed (reported as skipped elsewhere; `--require-optional` fails them instead)."""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

# Optional test dependencies: marker -> (module, its name, how to install it, what covers it
# otherwise).
# Tests with the marker are SKIPPED and reported when the module is missing, never counted as
# passed; `--require-optional` (CI) turns those skips into failures.
OPTIONAL = {
    "torch": ("torch", "PyTorch", "pip install -e '.[test,torch]'",
              "the conversion is checked against the stored PyTorch references instead"),
    "jax": ("jax", "JAX", "pip install -e '.[test,jax]'",
            "the other backends are checked by the torch-marked test"),
    "tf_keras": ("tf_keras", "tf-keras", "pip install --no-deps tf-keras (Keras 2 writes the "
                 "reference legacy files)", "the legacy format is read from files we write"),
}


def installed(module):
    """Whether `import module` can work, without importing it (seconds, hundreds of MB)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # blocked (tests/support/block_torch.py) or a stub
        return False


def torch_installed():
    return installed("torch")


def _reason(marker):
    _, name, how, instead = OPTIONAL[marker]
    return f"needs {name}, which is not installed ({how}); {instead}"


def pytest_addoption(parser):
    parser.addoption("--require-optional", action="store_true",
                     help="fail the tests marked torch / jax / tf_keras instead of skipping "
                          "them when their module is missing (CI installs them all)")


def pytest_report_header(config):
    return [f"{marker}: {'installed' if installed(module) else 'NOT installed: the tests marked'}"
            f"{'' if installed(module) else f' `{marker}` will be SKIPPED'}"
            for marker, (module, *_) in OPTIONAL.items()]


def pytest_collection_modifyitems(config, items):
    missing = [marker for marker, (module, *_) in OPTIONAL.items() if not installed(module)]
    for marker in missing:
        if config.getoption("--require-optional"):
            mark = pytest.mark.usefixtures(f"_fail_without_{marker}")
        else:
            mark = pytest.mark.skip(reason=_reason(marker))
        for item in items:
            if item.get_closest_marker(marker):
                item.add_marker(mark)


def _failing(marker):
    @pytest.fixture
    def fixture():
        pytest.fail(f"--require-optional was given but {OPTIONAL[marker][0]} is not installed",
                    pytrace=False)
    return fixture


_fail_without_torch = _failing("torch")
_fail_without_jax = _failing("jax")
_fail_without_tf_keras = _failing("tf_keras")


@pytest.fixture
def torch(request):
    """The `torch` module, for tests marked `torch` (others may not ask for it)."""
    if request.node.get_closest_marker("torch") is None:
        pytest.fail(f"{request.node.nodeid} uses PyTorch: mark it @pytest.mark.torch",
                    pytrace=False)
    if not installed("torch"):  # reached only with --require-optional (else skipped before)
        request.getfixturevalue("_fail_without_torch")
    import torch
    return torch


def pytest_terminal_summary(terminalreporter):
    skipped = [str(getattr(report, "longrepr", ""))
               for report in terminalreporter.stats.get("skipped", [])]
    for marker, (_, name, *_) in OPTIONAL.items():
        count = sum(f"needs {name}, which is not installed" in text for text in skipped)
        if count:
            terminalreporter.write_sep("=", f"{count} tests marked `{marker}` were SKIPPED: "
                                            f"{name} is not installed", yellow=True)


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
