"""Forking a Python process safely: CPython's fork protocol, Ctrl-C, threads,
buffered output, and no process left behind."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import XME

from conftest import ENV, run_script, start_script, state_of, wait_until

# A batch of slow calls whose workers write their pids into a directory,
# and which reports the parent's children when Ctrl-C reaches it.
SLOW_BATCH = r'''
import os, sys, time, XME
pids = sys.argv[1]
def slow(i):
    open(os.path.join(pids, str(os.getpid())), "w").close()
    time.sleep(120)
def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[1]
    except OSError:  # it ended while we looked
        return None
def children():
    me = str(os.getpid())
    return sorted(p for p in os.listdir("/proc") if p.isdigit() and parent_of(p) == me)
try:
    XME.XME(slow, pnum=2).fun(XME.Array(range(6)))
except KeyboardInterrupt:
    print("interrupted; children:", children(), flush=True)
    raise
'''


def _worker_pids(directory):
    return [int(p) for p in os.listdir(directory)]


@pytest.mark.parametrize("to_group", [False, True], ids=["kill -INT parent", "terminal Ctrl-C"])
def test_ctrl_c_stops_the_batch_and_reaps_every_worker(tmp_path, to_group):
    p = start_script(SLOW_BATCH, str(tmp_path))
    try:
        wait_until(lambda: len(_worker_pids(tmp_path)) == 2, what="two workers")
        started = time.monotonic()
        if to_group:
            os.killpg(p.pid, signal.SIGINT)
        else:
            os.kill(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if p.poll() is None:
            p.kill()
    assert "interrupted; children: []" in out, (out, err)
    assert err.rstrip().endswith("KeyboardInterrupt"), err
    assert p.returncode == -signal.SIGINT  # Python's exit after an uncaught KeyboardInterrupt
    assert took < 20, f"Ctrl-C took {took:.1f} s"
    for pid in _worker_pids(tmp_path):
        assert state_of(pid) is None, f"worker {pid} was left behind"


def test_workers_die_with_a_killed_parent(tmp_path):
    p = start_script(SLOW_BATCH, str(tmp_path))
    try:
        workers = wait_until(lambda: len(_worker_pids(tmp_path)) == 2 and _worker_pids(tmp_path),
                             what="two workers")
    finally:
        p.kill()
        p.communicate(timeout=30)
    wait_until(lambda: all(state_of(w) is None for w in workers), timeout=10,
               what="the workers of a killed parent to end")


def test_cpythons_fork_protocol_runs_around_every_fork():
    # os.register_at_fork handlers run only through PyOS_BeforeFork /
    # PyOS_AfterFork_*: their traces prove the hooks called them.
    # Calls of 0.3 s: a second worker is forked while the first runs one
    # (spawn="eager" forks both at once in any case).
    for spawn in ("on_demand", "eager"):
        code = r'''
import os, time, XME
say = lambda word: os.write(1, word.encode() + b"\n")  # one write(2) a line
os.register_at_fork(before=lambda: say("before"), after_in_parent=lambda: say("parent"),
                    after_in_child=lambda: say("child"))
slow = lambda i: time.sleep(0.3) or i
print(XME.XME(slow, pnum=2, spawn=%r).fun(XME.Array(range(2))), flush=True)
''' % spawn
        out = run_script(code)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[-1] == "(0, 1)"
        assert sorted(lines[:-1]) == sorted(["before", "parent", "child"] * 2), (spawn, lines)


def test_short_calls_fork_one_worker_unless_spawn_is_eager():
    code = r'''
import os, XME
say = lambda word: os.write(1, word.encode() + b"\n")
os.register_at_fork(before=lambda: say("fork"))
for spawn in ("on_demand", "eager"):
    for _ in range(5):
        say("batch " + spawn)
        print(XME.XME(lambda i: i * i, pnum=2, spawn=spawn).fun(XME.Array(range(10))), flush=True)
'''
    out = run_script(code)
    assert out.returncode == 0, out.stderr
    forks = {"on_demand": [], "eager": []}
    for line in out.stdout.splitlines():
        if line.startswith("batch "):
            current = forks[line.split()[1]]
            current.append(0)
        elif line == "fork":
            current[-1] += 1
        else:
            assert line == str(tuple(i * i for i in range(10))), out.stdout
    # Ten calls of a few microseconds: one fork (a second worker would
    # arrive after the first had run them all), unless told otherwise. (A
    # call held up past a fork's cost by a loaded machine forks a second.)
    assert forks["eager"] == [2] * 5, forks
    assert len(forks["on_demand"]) == 5 and 1 in forks["on_demand"], forks
    assert max(forks["on_demand"]) <= 2, forks


def test_spawn_is_checked():
    import XME
    with pytest.raises(ValueError, match="spawn must be"):
        XME.XME(abs, spawn="lazy")


def test_text_buffered_before_a_batch_is_written_once():
    # stdout is a pipe here, so block-buffered: without the flush before
    # each fork, every worker would write "before" again when it flushes.
    code = r'''
import sys, XME
print("before", end="")
sys.stderr.write("err-before")
def task(i):
    print("from", i)
    return i
XME.XME(task, pnum=2).fun(XME.Array(range(4)))
print("after")
'''
    out = run_script(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("before") == 1, out.stdout
    assert sorted(out.stdout.replace("before", "").splitlines()) == sorted(
        ["after"] + [f"from {i}" for i in range(4)])
    assert out.stderr.count("err-before") == 1, out.stderr


def test_a_busy_thread_is_warned_about_and_does_not_hang(no_leftover_children):
    stop = threading.Event()
    spins = [0]

    def busy():
        while not stop.is_set():
            spins[0] += 1

    t = threading.Thread(target=busy)
    t.start()
    try:
        with pytest.warns(RuntimeWarning, match="multi-threaded"):
            out = XME.XME(lambda x: x * x, pnum=2).fun(XME.Array(range(20)))
    finally:
        stop.set()
        t.join()
    assert out == tuple(x * x for x in range(20))
    assert spins[0] > 0


def test_the_parent_waits_with_the_gil_released():
    ticks = [0]
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        with pytest.warns(RuntimeWarning):
            XME.XME(time.sleep, pnum=2).fun(XME.Array([0.5, 0.5]))
        during = ticks[0]
    finally:
        stop.set()
        t.join()
    # Holding the GIL for the batch's half second would have frozen it.
    assert during > 50, during


def test_a_lock_held_by_another_thread_at_the_fork_is_rescued_by_a_timeout():
    lock = threading.Lock()
    holding, release = threading.Event(), threading.Event()

    def holder():
        with lock:
            holding.set()
            release.wait()

    t = threading.Thread(target=holder)
    t.start()
    holding.wait()
    try:
        def task(i):
            if i == 1:
                with lock:  # held in the worker for ever: its holder is not there
                    pass
            return i

        with pytest.warns(RuntimeWarning):
            xme = XME.XME(task, pnum=2, timeout=1, errors="raise")
            with pytest.raises(XME.BatchError) as caught:
                xme.fun(xme.Array(range(3)))
    finally:
        release.set()
        t.join()
    assert caught.value.results == ((0, None, 2),)
    assert caught.value.failures[0].kind == "timeout"


def test_free_threaded_builds_are_refused_clearly():
    code = r'''
import sysconfig
real = sysconfig.get_config_var
sysconfig.get_config_var = lambda name: 1 if name == "Py_GIL_DISABLED" else real(name)
import XME
'''
    out = run_script(code)
    assert out.returncode != 0
    assert "ImportError: XME (xme-py) does not support free-threaded CPython builds" in out.stderr


@pytest.mark.parametrize("module", ["XME.Manager", "XME.MPI"])
def test_later_faces_keep_their_place_and_say_so(module):
    with pytest.raises(ImportError, match="not available in xme's Python face yet"):
        __import__(module)


# Ctrl-C while the pre-batch flush waits on a full stdout pipe.
FLUSH_BLOCKED = r'''
import os, sys, time, XME
os.write(1, b"a" * 65536)  # the pipe is full: nobody reads it yet
print("PARENT-LINE")       # buffered in sys.stdout
def task(i):
    time.sleep(1)
    return i
os.write(2, b"starting batch\n")
try:
    out = XME.XME(task, pnum=2).fun(XME.Array(range(4)))
    os.write(2, f"batch finished: {out}\n".encode())
except KeyboardInterrupt:
    os.write(2, b"KeyboardInterrupt\n")
'''


def test_ctrl_c_during_the_flush_before_the_forks_raises_and_prints_nothing_twice():
    read, write = os.pipe()
    p = subprocess.Popen([sys.executable, "-c", FLUSH_BLOCKED], stdout=write,
                         stderr=subprocess.PIPE, env=ENV)
    os.close(write)
    try:
        assert p.stderr.readline() == b"starting batch\n"
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        time.sleep(1.0)
        data = b""
        while chunk := os.read(read, 1 << 20):
            data += chunk
        p.wait(timeout=30)
        err = p.stderr.read().decode()
    finally:
        os.close(read)
        if p.poll() is None:
            p.kill()
    assert err.strip() == "KeyboardInterrupt", err
    assert data.count(b"PARENT-LINE") == 1


def test_ctrl_c_during_a_forks_flush_cancels_it_and_stops_the_batch(no_leftover_children):
    # sys.stdout's third flush is interrupted: the one before the second
    # worker's fork (the first is the batch's own, the second the first fork's).
    class Stdout:
        flushes = 0

        def write(self, text):
            return len(text)

        def flush(self):
            Stdout.flushes += 1
            if Stdout.flushes == 3:
                raise KeyboardInterrupt

    real, sys.stdout = sys.stdout, Stdout()
    try:
        with pytest.raises(KeyboardInterrupt):
            XME.XME(time.sleep, pnum=2, do_with_log=False).fun(XME.Array([5, 5, 5]))
    finally:
        sys.stdout = real
    assert Stdout.flushes == 3
