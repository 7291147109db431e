"""The interpreter exits while another thread is inside a batch: CPython
3.9-3.13 end such a thread with pthread_exit when it takes the GIL back,
which must never happen inside XME's Rust frames (a segfault at exit)."""

import os

import pytest

from conftest import run_script, state_of, wait_until

# A daemon thread runs batches in a loop; the main thread ends under it.
# argv: task seconds, seconds before the main thread ends, worker pid dir.
DAEMON_IN_BATCHES = r'''
import os, sys, threading, time, warnings, XME
warnings.simplefilter("ignore")  # the multi-threaded RuntimeWarning
task_s, main_s, pids = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def task(i):
    open(os.path.join(pids, str(os.getpid())), "w").close()
    time.sleep(task_s)
    if i == 3:
        os._exit(1)  # a replacement worker is forked in the batch
    return -i
def bg():
    x = XME.XME(task, pnum=2)
    while True:
        assert x.fun(x.Array(range(6)))[:3] == (0, -1, -2)
threading.Thread(target=bg, daemon=True).start()
time.sleep(main_s)
print("main exits", flush=True)
'''


@pytest.mark.parametrize("task_s,main_s", [(0, 0.3), (0, 0.5), (0.05, 0.4), (0.3, 0.2)])
@pytest.mark.parametrize("attempt", range(3))
def test_exit_with_a_daemon_thread_in_a_batch_is_clean(tmp_path, task_s, main_s, attempt):
    out = run_script(DAEMON_IN_BATCHES, str(task_s), str(main_s), str(tmp_path), timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    assert "main exits\n" in out.stdout, out.stdout[-2000:]
    assert "Fatal Python error" not in out.stderr and "panicked" not in out.stderr, out.stderr
    workers = [int(p) for p in os.listdir(tmp_path)]
    assert workers, "the daemon thread ran no batch"
    # Workers of the exited process end with it (PR_SET_PDEATHSIG).
    wait_until(lambda: all(state_of(w) in (None, "Z") for w in workers), timeout=10,
               what="the workers of the exited process to end")


# A program's own atexit handler, registered before XME's (XME imported
# lazily, in the thread), stops and joins a daemon thread running batches.
ATEXIT_JOINS_THE_BATCH_THREAD = r'''
import atexit, threading, time, warnings
warnings.simplefilter("ignore")
stop = threading.Event(); done = []
def worker():
    import XME
    x = XME.XME(lambda i: (time.sleep(0.05), i)[1], pnum=2)
    while not stop.is_set():
        assert x.fun(x.Array(range(4))) == (0, 1, 2, 3)
    done.append(True)
t = threading.Thread(target=worker, daemon=True)
def shutdown():
    stop.set(); t.join()
    print("worker stopped cleanly:", done, flush=True)
atexit.register(shutdown)
t.start(); time.sleep(0.5)
print("main returns", flush=True)
'''


@pytest.mark.parametrize("attempt", range(2))
def test_an_atexit_handler_can_join_a_thread_running_batches(attempt):
    out = run_script(ATEXIT_JOINS_THE_BATCH_THREAD, timeout=30)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    assert out.stdout == "main returns\nworker stopped cleanly: [True]\n", out.stdout
    assert "Fatal Python error" not in out.stderr and "panicked" not in out.stderr, out.stderr


def test_running_the_atexit_handlers_by_hand_leaves_threads_free_to_run_batches():
    out = run_script(r'''
import atexit, threading, warnings, XME
warnings.simplefilter("ignore")
atexit._run_exitfuncs()
print(XME.XME(lambda i: i, pnum=2).fun(XME.Array(range(3))), flush=True)
res = []
t = threading.Thread(target=lambda: res.append(XME.XME(lambda i: -i, pnum=2).fun(XME.Array(range(3)))),
                     daemon=True)
t.start(); t.join(20)
print(res, flush=True)
''', timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    assert out.stdout == "(0, 1, 2)\n[(0, -1, -2)]\n", out.stdout


def test_a_batch_started_while_the_interpreter_shuts_down_is_refused_clearly():
    # A __del__ run by the interpreter's teardown starts a batch: one clear
    # error (Python reports it as ignored), no call half-run, no worker left.
    out = run_script(r'''
import os, XME
class Later:
    def __del__(self):
        x = XME.XME(lambda i: os.write(1, b"ran\n"), pnum=2)
        x.fun(x.Array(range(3)))
keep = Later()
print("main done", flush=True)
''', timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "main done\n", out.stdout
    assert "the interpreter is shutting down, so XME cannot start a batch" in out.stderr, out.stderr
    assert out.stderr.count("XMEError") == 1, out.stderr
