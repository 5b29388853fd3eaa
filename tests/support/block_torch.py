"""pytest plugin making PyTorch unimportable: `python -m pytest -p tests.support.block_torch ...`.

Loaded before conftest and the test modules, it puts a finder first on `sys.meta_path` that
refuses `torch` and its submodules, as on a machine without PyTorch. At the end of the run it
prints how many imports it refused and whether torch got loaded anyway (it must not).
"""

import importlib.abc
import sys

BLOCKED = "torch"


class TorchBlocker(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.refused = []

    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            self.refused.append(name)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by {__name__})",
                                      name=name)
        return None


BLOCKER = TorchBlocker()
sys.meta_path.insert(0, BLOCKER)


def pytest_terminal_summary(terminalreporter):
    loaded = BLOCKED in sys.modules and sys.modules[BLOCKED] is not None
    terminalreporter.write_line(f"TORCH-BLOCKER refused={len(BLOCKER.refused)} "
                                f"loaded={loaded}")
