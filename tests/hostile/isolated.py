"""Run a command in a child process; report its exit code, output and its own peak RSS (Linux).

Hostile inputs may crash or exhaust the process that reads them, so the tests read them in a
child: a segfault shows as a negative return code. Linux counts a forked child's peak RSS
(``ru_maxrss``) from the parent's pages at fork time, so a child forked by pytest (hundreds of
MB with torch loaded) would report pytest's size. The child is therefore started by a tiny
launcher (``python -S``, a few MB), which waits for it with `os.wait4` and writes that child's
own return code and peak RSS to a report file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

PEAK_RSS_LIMIT_BYTES = 1 << 30  # what a hostile file may make its reader use, at most
_QUIET = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
_LAUNCHER = """
import os, resource, sys
report, address_space, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    if address_space:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(report, "w") as f:
    f.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
"""


class Outcome(NamedTuple):
    returncode: int  # negative: killed by that signal (-11: segfault)
    stdout: str
    stderr: str
    peak_rss_bytes: int

    @property
    def stderr_lines(self):
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_isolated(argv, workdir, *, timeout=180, address_space_bytes=0) -> Outcome:
    """Run ``argv`` (``argv[0]`` a path) in ``workdir`` with the current environment.

    ``address_space_bytes`` caps the child's virtual memory, so that a regression fails with a
    MemoryError instead of taking the machine's memory.
    """
    workdir = Path(workdir)
    report = workdir / "child.report"
    out_path, err_path = workdir / "child.stdout", workdir / "child.stderr"
    command = [sys.executable, "-S", "-c", _LAUNCHER, str(report), str(address_space_bytes),
               *map(str, argv)]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        launcher = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=err,
                                    env={**os.environ, **_QUIET}, start_new_session=True)
        try:
            launcher.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
            raise
    returncode, peak = map(int, report.read_text().split())
    return Outcome(returncode, out_path.read_text(errors="replace"),
                   err_path.read_text(errors="replace"), peak)


def python(*args) -> list[str]:
    return [sys.executable, *map(str, args)]
