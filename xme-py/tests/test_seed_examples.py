"""The seed's section 1 examples, as the seed writes them (tests/seed/,
copied verbatim; a line marked "added" supplies what the seed elides),
with the output the seed shows."""

import os
import re
import signal

from conftest import SEED, run_script, start_script, children_of, state_of, wait_until

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\(pid@(\d+)\):This is function fun$")


def test_1_2_1_single_function_model_prints_5050():
    out = run_script(SEED / "s1_2_1_single.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "5050\n"
    assert out.stderr == ""


def test_1_2_1_timed_prints_both_sums_and_both_times():
    out = run_script(SEED / "s1_2_1_timed.py")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["xme 5050", "noxme 5050"]
    assert [line.split()[0] for line in lines[2:]] == ["xme", "noxme"]
    assert all(float(line.split()[1]) >= 0 for line in lines[2:])


def test_1_2_2_two_services_run_at_once_until_ctrl_c():
    # The seed's services loop for ever: both run, each in its own worker,
    # until Ctrl-C, which stops the batch and reaps both.
    p = start_script(SEED / "s1_2_2_services.py")
    try:
        workers = wait_until(lambda: len(children_of(p.pid)) == 2 and children_of(p.pid),
                             what="two service workers")
        wait_until(lambda: all(state_of(w) == "R" for w in workers) or None, timeout=10,
                   what="both services running (state R) at once")
        os.killpg(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert "KeyboardInterrupt" in err, err
    for w in workers:
        assert state_of(w) is None, f"service worker {w} was left behind"


def test_1_3_1_print_writes_the_seed_log_line_from_the_workers():
    out = run_script(SEED / "s1_3_1_print.py")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 10, out.stdout
    pids = set()
    for line in lines:
        m = LOG_LINE.match(line)
        assert m, f"not the seed's format: {line!r}"
        pids.add(int(m.group(1)))
    assert 1 <= len(pids) <= os.cpu_count()  # worker pids, at most pnum of them


def test_1_3_2_logobj_reaches_the_function():
    # The seed's function takes logobj and prints nothing ("#do something").
    out = run_script(SEED / "s1_3_2_logobj.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "(None, None, None, None)\n"


def test_1_3_2_logobj_attributes_shape_the_lines():
    # The seed's "#do something", filled in: each call sets logobj's options.
    code = '''
import XME, tempfile, os
def fun(i, logobj=None):
    if logobj!=None: print=logobj.write_log
    logobj.time = False
    logobj.indent_type, logobj.indent_num = "*", 2
    if i == 1:
        logobj.processing = False
    print("call", i, msgtype="Task", indent=1)
    return logobj.default_msgtype
path = os.path.join(tempfile.mkdtemp(), "xme.log")
xme = XME.XME(fun, logfile=path, pnum=1)
print(xme.fun(xme.Array([0, 1])))
print(open(path).read(), end="")
'''
    out = run_script(code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # pnum=1: one worker runs both calls in order; call 1 hides the pid.
    assert re.fullmatch(r"\(Task\)\(pid@\d+\):\*\*call 0", lines[0]), lines
    assert lines[1] == "(Task):**call 1"
    assert lines[2] == "('Message', 'Message')"
    assert lines[3:] == lines[:2]  # the same lines, appended to the log file
