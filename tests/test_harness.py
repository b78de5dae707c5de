"""The test suite's own hang guard: run_bounded (tests/conftest.py) ends a hung subprocess tree and fails the test."""
from __future__ import annotations

import os
import sys

import pytest

# A parent that starts a grandchild holding stdout open, prints the grandchild's pid, then hangs.
HANG = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:        # a zombie awaiting its (killed) parent's reaper counts as gone
        return f.read().split()[2] != "Z"


def test_run_bounded_kills_the_whole_group_and_fails(bounded):
    with pytest.raises(pytest.fail.Exception, match=r"hanger did not finish within 2 s") as e:
        bounded([sys.executable, "-c", HANG], timeout=2, what="hanger")
    grandchild = int(str(e.value).split("stdout:\n")[1].split()[0])
    assert not (os.path.exists(f"/proc/{grandchild}") and _alive(grandchild))


def test_run_bounded_returns_the_finished_process(bounded):
    proc = bounded([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                   timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out\n", "err\n")
