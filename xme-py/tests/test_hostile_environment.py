"""A batch in a process that is hostile to its workers: fork handlers that
end every child, SIGCHLD ignored, tasks that close descriptors or leave
threads behind. Each case ends with every call accounted for."""

import os

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


def test_sigchld_ignored_still_gives_every_outcome_and_is_put_back():
    code = r'''
import os, signal, XME
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # common in daemons and servers
def f(i):
    if i == 2:
        os._exit(6)
    return -i
x = XME.XME(f, pnum=2, errors="raise")
try:
    x.fun(x.Array(range(6)))
except XME.BatchError as e:
    print(e.results, [(g.call, g.kind, g.exit_code) for g in e.failures])
print(signal.getsignal(signal.SIGCHLD) is signal.SIG_IGN)
print(os.listdir(f"/proc/{os.getpid()}/task") and [
    p for p in os.listdir("/proc") if p.isdigit() and
    open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())])
'''
    out = run_script(code, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "((0, -1, None, -3, -4, -5),) [(2, 'exit', 6)]", "True", "[]"], out.stdout


def test_a_non_daemon_thread_a_task_started_finishes_before_its_worker_exits(tmp_path):
    code = rf'''
import os, threading, time, XME
def task(i):
    def later():
        time.sleep(1.5)  # longer than a worker that closed its pipe may linger
        with open(os.path.join({str(tmp_path)!r}, f"out{{i}}"), "w") as f:
            f.write("done")
    threading.Thread(target=later).start()  # not daemon: Python waits for it
    return i
print(XME.XME(task, pnum=2).fun(XME.Array(range(4))))
'''
    out = run_script(code, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "(0, 1, 2, 3)\n"
    # Written before each worker left: the batch waited for them.
    assert sorted(os.listdir(tmp_path)) == [f"out{i}" for i in range(4)]


def test_a_non_daemon_thread_that_never_ends_is_cut_off_by_the_timeout():
    code = r'''
import os, threading, time, XME
def task(i):
    if i == 1:
        threading.Thread(target=lambda: time.sleep(3600)).start()  # not daemon
    return -i
t = time.monotonic()
print(XME.XME(task, pnum=2, timeout=1).fun(XME.Array(range(4))))
print(time.monotonic() - t < 30)
print([p for p in os.listdir("/proc") if p.isdigit() and
       open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == str(os.getpid())])
'''
    out = run_script(code, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # The log (stdout by default) says which worker was killed, and why.
    assert [line for line in lines if "still waiting to leave" in line] == lines[:1], lines
    assert lines[1:] == ["(0, -1, -2, -3)", "True", "[]"], out.stdout


def test_a_task_that_closes_every_descriptor_is_reported_as_closing_its_channel():
    code = r'''
import os, time, XME
def task(i):
    if i in (1, 3):
        os.closerange(3, 4096)  # the worker's result pipe too
        if i == 3:
            time.sleep(2)       # and lingers
    return i
x = XME.XME(task, pnum=2, errors="raise")
try:
    x.fun(x.Array(range(6)))
except XME.BatchError as e:
    print(e.results)
    for f in e.failures:
        print(f.call, f.kind, f.message)
'''
    out = run_script(code, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "((0, None, 2, None, 4, 5),)", out.stdout
    assert [line.split()[:2] for line in lines[1:]] == [["1", "lost"], ["3", "lost"]], out.stdout
    assert all("result channel was closed" in line for line in lines[1:]), out.stdout


def test_calls_whose_replies_went_into_a_reused_descriptor_may_have_run(tmp_path):
    # The task closes every inherited descriptor, then opens files that
    # take the freed numbers, the result pipe's among them: the worker's
    # replies for calls 1 and 2 land in a user's file. Those calls ran:
    # they are reported lost, never as "never run".
    code = rf'''
import os, XME
keep = []
def t(i):
    if i == 1:
        os.closerange(3, 1 << 16)
        for k in range(40):
            keep.append(open(os.path.join({str(tmp_path)!r}, f"f{{k}}"), "wb", buffering=0))
    return ("value", i)
print(XME.XME(t, pnum=1).fun(XME.Array(range(3))))
'''
    out = run_script(code, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "(('value', 0), None, None)", out.stdout
    assert "never run" not in out.stdout, out.stdout
    assert any("may have run" in line and "[1, 2]" in line for line in lines), out.stdout


def test_a_batch_too_big_for_the_address_space_limit_raises():
    out = run_script(r'''
import resource, XME
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
try:
    XME.XME(lambda: 1, pnum=1).fun(calnum=10**8)
except (ValueError, MemoryError) as e:
    print(type(e).__name__, "RLIMIT_AS" in str(e))
print(XME.XME(lambda i: -i, pnum=2).fun(XME.Array(range(3))))
''', timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["ValueError True", "(0, -1, -2)"], out.stdout
