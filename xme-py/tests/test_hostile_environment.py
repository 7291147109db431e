"""A batch in a process that is hostile to its workers: fork handlers that
end every child, SIGCHLD ignored, tasks that close descriptors or leave
threads behind. Each case ends with every call accounted for."""

import pytest

from conftest import run_script


@pytest.mark.parametrize("end", ["os._exit(3)", "os.kill(os.getpid(), 9)"])
def test_a_fork_handler_that_ends_every_worker_fails_the_calls_without_looping(end):
    code = rf'''
import os, time, XME
os.register_at_fork(after_in_child=lambda: {end})
x = XME.XME(abs, pnum=2, timeout=1, errors="raise")
t = time.monotonic()
try:
    x.fun(x.Array([-1, -2, -3]))
except XME.BatchError as e:
    print("took", time.monotonic() - t)
    for f in e.failures:
        print("failed", f.call, f.kind, f.message)
'''
    out = run_script(code, timeout=60)
    assert out.returncode == 0, out.stderr
    took = [line for line in out.stdout.splitlines() if line.startswith("took ")]
    assert len(took) == 1 and float(took[0].split()[1]) < 30, out.stdout
    failed = [line.split(maxsplit=3)[1:] for line in out.stdout.splitlines()
              if line.startswith("failed ")]
    assert [f[:2] for f in failed] == [["0", "lost"], ["1", "lost"], ["2", "lost"]], out.stdout
    assert all("ended before taking any call" in f[2] for f in failed), failed
