"""Shared test setup: quiet TensorFlow logs, keep every test offline and its caches private,
and run PyTorch's live checks only where PyTorch is installed (reported as skipped elsewhere)."""

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

TORCH_MARK = "torch"
TORCH_SKIP_REASON = ("needs PyTorch, which is not installed (pip install -e '.[test,torch]'); "
                     "the conversion is checked against the stored PyTorch references instead")


def torch_installed():
    """Whether `import torch` can work, without importing it (seconds, hundreds of MB)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # blocked (tests/support/block_torch.py) or a stub
        return False


def pytest_addoption(parser):
    parser.addoption("--require-torch", action="store_true",
                     help="fail the tests marked `torch` instead of skipping them when PyTorch "
                          "is not installed (CI installs it)")


def pytest_report_header(config):
    if torch_installed():
        return "torch: installed; the tests marked `torch` compare with PyTorch live"
    return f"torch: NOT installed; the tests marked `torch` will be SKIPPED ({TORCH_SKIP_REASON})"


def pytest_collection_modifyitems(config, items):
    if torch_installed():
        return
    if config.getoption("--require-torch"):
        mark = pytest.mark.usefixtures("_fail_without_torch")
    else:
        mark = pytest.mark.skip(reason=TORCH_SKIP_REASON)
    for item in items:
        if item.get_closest_marker(TORCH_MARK):
            item.add_marker(mark)


@pytest.fixture
def _fail_without_torch():
    pytest.fail("--require-torch was given but PyTorch is not installed", pytrace=False)


@pytest.fixture
def torch(request):
    """The `torch` module, for tests marked `torch` (others may not ask for it)."""
    if request.node.get_closest_marker(TORCH_MARK) is None:
        pytest.fail(f"{request.node.nodeid} uses PyTorch: mark it @pytest.mark.torch",
                    pytrace=False)
    if not torch_installed():  # reached only with --require-torch (else skipped before)
        request.getfixturevalue("_fail_without_torch")
    import torch

    return torch


def pytest_terminal_summary(terminalreporter):
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if TORCH_SKIP_REASON in str(getattr(report, "longrepr", ""))]
    if skipped:
        terminalreporter.write_sep("=", f"{len(skipped)} tests marked `torch` were SKIPPED: "
                                        "PyTorch is not installed", yellow=True)


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
