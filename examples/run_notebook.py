"""Run a notebook top to bottom in a Jupyter kernel, restarting the kernel where a cell asks.

A code cell tagged `fresh-kernel` runs in a new kernel, as when a user restarts the kernel
before it: that is how the quick start proves a saved model reloads in a fresh process. Used by
the test suite (tests/test_notebook.py) and to refresh the saved outputs:

    python examples/run_notebook.py examples/quickstart.ipynb --write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

FRESH_KERNEL_TAG = "fresh-kernel"


def _kernel_spec_dir():
    """A kernel spec running this very interpreter (so the kernel sees this environment)."""
    folder = Path(tempfile.mkdtemp(prefix="keras_vggres_kernel_"))
    spec = folder / "kernels" / "keras_vggres"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "keras_vggres", "language": "python"}))
    return folder


def run_notebook(path, *, timeout=900, env=None):
    """Execute `path` (cells in order, a new kernel at each `fresh-kernel` cell); return the
    executed notebook and its run time in seconds. Raises nbclient's CellExecutionError on the
    first failing cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.util import run_sync

    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    os.environ["JUPYTER_PATH"] = str(_kernel_spec_dir())
    os.environ.update(env or {})  # kernels (and their restarts) inherit this environment
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="keras_vggres",
                                resources={"metadata": {"path": str(Path(path).parent)}})
        start = time.perf_counter()
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if FRESH_KERNEL_TAG in cell.get("metadata", {}).get("tags", []):
                    run_sync(client.km.restart_kernel)(now=True)
                    run_sync(client.kc.wait_for_ready)(timeout=120)
                client.execute_cell(cell, index)
        return nb, time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("--write", action="store_true", help="save the outputs into the file")
    args = parser.parse_args(argv)
    nb, seconds = run_notebook(args.notebook)
    print(f"{args.notebook}: ran in {seconds:.0f} s")
    if args.write:
        import nbformat

        from keras_vggres._atomic import write_text

        write_text(args.notebook, nbformat.writes(nb) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
