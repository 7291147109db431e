"""Helpers for the XME tests: scripts run as programs of their own, and the
processes they leave (or must not leave) behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SEED = Path(__file__).parent / "seed"

# Scripts run with Python's default buffering (block-buffered into a pipe),
# whatever this environment says, so that the tests of buffered output
# test what a program run with defaults does.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}


def run_script(path_or_code, *args, timeout=120, cwd=None):
    """Runs a script (a path, or code) with this interpreter; its result."""
    target = [str(path_or_code)] if isinstance(path_or_code, Path) else ["-c", path_or_code]
    return subprocess.run([sys.executable, *target, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=ENV)


def start_script(path_or_code, *args, cwd=None):
    """Starts a script in a session of its own (as a terminal runs a
    program: Ctrl-C reaches its whole process group), with SIGINT at its
    default, so Python raises KeyboardInterrupt."""
    target = [str(path_or_code)] if isinstance(path_or_code, Path) else ["-c", path_or_code]
    return subprocess.Popen(
        [sys.executable, *target, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=cwd, env=ENV, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def children_of(pid):
    """Pids whose parent is ``pid`` (zombies included)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def state_of(pid):
    """The process's state letter (R, S, Z, ...), or None once it is reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()[0]


def wait_until(predicate, timeout=30.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def no_leftover_children():
    """Asserts the test left no child process of this one behind."""
    before = set(children_of(os.getpid()))
    yield
    left = set(children_of(os.getpid())) - before
    assert not left, f"processes left behind: {sorted(left)}"
