"""Tasks as Python users write them, and every way a call can fail: the
failed call's slot is None and the log says how (or errors="raise" carries
it), and every other call returns its own result, once."""

import hashlib
import os
import re
import signal

import pytest

import XME

from conftest import run_script


def test_lambdas_closures_and_local_functions_are_tasks(no_leftover_children):
    scale = 3

    def local(x, offset=0):
        return x * scale + offset

    xme = XME.XME(lambda x: x + 1, local, pnum=2, print_in_screen=False)
    assert xme.fun(xme.Array(range(5))) == (1, 2, 3, 4, 5)
    assert xme.funs(tagr_array=[[xme.Array([1, 2])], [xme.Array([1, 2])]],
                    args_array=[{}, {"offset": 100}]) == ((2, 3), (103, 106))
    counter = {"calls": 0}

    def closure(_):  # mutates a copy in each worker, never the parent's
        counter["calls"] += 1
        return counter["calls"]

    assert XME.XME(closure, pnum=1).fun(XME.Array(range(3))) == (1, 2, 3)
    assert counter["calls"] == 0


def test_arrays_pad_with_their_last_element_and_plain_arguments_go_to_every_call():
    xme = XME.XME(lambda a, b, c, d=None: (a, b, c, d), pnum=2)
    out = xme.fun(xme.Array(range(4)), xme.Array("xy"), "same", d=xme.Array([None, 1]))
    assert out == ((0, "x", "same", None), (1, "y", "same", 1), (2, "y", "same", 1),
                   (3, "y", "same", 1))
    assert xme.fun(1, 2, 3) == ((1, 2, 3, None),)  # no Array: one call
    assert xme.fun(xme.Array([]), 0, 0) == ()  # an empty Array: no call
    assert XME.XME(lambda: 7).fun(calnum=3) == (7, 7, 7)  # XME 4.2's calnum
    assert XME.XME(lambda calnum=2: calnum).fun(calnum=3) == (3, 3, 3)  # passed on
    assert XME.XME(lambda calnum=2: calnum).fun() == (2,)
    with pytest.raises(ValueError, match="empty"):
        xme.fun(xme.Array([1, 2]), xme.Array([]), 0)


def test_the_seeds_keyword_notes_work_as_python_calls_do():
    # Seed 1.2.2, note 1: keywords reach **kwargs, and its workaround
    # (kwargs={...}) still works.
    def example_fun(a0, a1=None, a2=None, **kwargs):
        return a0, a1, a2, kwargs

    xme = XME.XME(example_fun, pnum=2)
    expected = tuple((i, "a1", "a2", {"kw1": "kw1", "kw2": "kw2"}) for i in range(3))
    assert xme.fun(xme.Array(range(3)), a1="a1", a2="a2", kw1="kw1", kw2="kw2") == expected
    assert xme.fun(xme.Array(range(3)), a1="a1", a2="a2",
                   kwargs={"kw1": "kw1", "kw2": "kw2"}) == expected

    # Note 2: keywords after *args reach their parameters.
    def starred(*args, a1=None, a2=None):
        return args, a1, a2

    assert XME.XME(starred).fun(0, 1, XME.Array([2]), a1="a1", a2="a2") == (((0, 1, 2), "a1", "a2"),)


def test_a_raising_call_logs_its_traceback_and_the_others_return(capfd, no_leftover_children):
    def task(i):
        if i == 2:
            return {}["missing key %d" % i]
        return i * 10

    out = XME.XME(task, pnum=2).fun(XME.Array(range(6)))
    assert out == (0, 10, None, 30, 40, 50)
    log = capfd.readouterr().out
    assert re.search(r"^\(Error\)\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\(pid@%d\):call 2 of "
                     r"test_a_raising_call_logs_its_traceback_and_the_others_return.<locals>.task "
                     r"\(function 0\) failed: KeyError: 'missing key 2'$" % os.getpid(), log, re.M), log
    assert "Traceback (most recent call last):" in log
    assert 'return {}["missing key %d" % i]' in log  # the user's line, not XME's
    assert "_xmesi.py" not in log


def test_sigkill_and_exit_6_fail_their_calls_only(capfd, no_leftover_children):
    def task(i):
        if i == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        if i == 4:
            os._exit(6)
        return i

    out = XME.XME(task, pnum=2).fun(XME.Array(range(7)))
    assert out == (0, None, 2, 3, None, 5, 6)
    log = capfd.readouterr().out
    assert "call 1 of " in log and "failed: its worker was killed by signal 9 (SIGKILL)" in log
    assert "call 4 of " in log and "failed: its worker exited with status 6 before returning" in log


def test_errors_raise_carries_every_outcome(no_leftover_children):
    class Refused(Exception):
        pass

    def task(i):
        if i == 0:
            raise Refused("not this one")
        if i == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        if i == 3:
            return lambda: None  # returns, but cannot be pickled
        return i

    xme = XME.XME(task, pnum=2, errors="raise", print_in_screen=False)
    with pytest.raises(XME.BatchError) as caught:
        xme.fun(xme.Array(range(5)))
    e = caught.value
    assert isinstance(e, XME.XMEError)
    assert e.results == ((None, 1, None, None, 4),)
    f0, f2, f3 = e.failures
    assert e.outcomes == ((f0, 1, f2, f3, 4),)
    assert (f0.call, f0.kind, f0.message) == (0, "exception", "not this one")
    assert f0.exc_type.endswith(".<locals>.Refused")
    assert "raise Refused(\"not this one\")" in f0.traceback
    assert f0.exception is None  # a local class: it could not be pickled, its text is kept
    assert (f2.call, f2.kind, f2.signal) == (2, "signal", 9)
    assert (f3.call, f3.kind) == (3, "result")
    assert "could not be pickled" in f3.message
    assert "3 call(s) failed" in str(e) and "Refused: not this one" in str(e)


def test_errors_raise_keeps_a_picklable_exception():
    xme = XME.XME(lambda x: 1 // x, errors="raise")
    with pytest.raises(XME.BatchError) as caught:
        xme.fun(xme.Array([1, 0]))
    (failure,) = caught.value.failures
    assert isinstance(failure.exception, ZeroDivisionError)
    assert caught.value.results == ((1, None),)


def test_a_call_past_its_timeout_is_killed_and_the_others_return(no_leftover_children):
    import time

    xme = XME.XME(lambda s: time.sleep(s) or s, pnum=2, timeout=1, errors="raise")
    with pytest.raises(XME.BatchError) as caught:
        xme.fun(xme.Array([0, 60, 0.1, 0]))
    assert caught.value.results == ((0, None, 0.1, 0),)
    (failure,) = caught.value.failures
    assert (failure.call, failure.kind, failure.timeout) == (1, "timeout", 1.0)


def test_a_10_mb_result_crosses_whole():
    def big(seed):
        return seed, os.urandom(10 << 20)

    out = XME.XME(big, pnum=2).fun(XME.Array([1, 2, 3]))
    assert [s for s, _ in out] == [1, 2, 3]
    assert all(len(b) == 10 << 20 for _, b in out)
    assert len({hashlib.sha256(b).hexdigest() for _, b in out}) == 3


def test_funs_runs_the_table_and_checks_its_arguments():
    xme = XME.XME(lambda a: a, lambda a, b=0: a + b, pnum=2)
    assert xme.funs(funum_array=[1, 1], tagr_array=[[1], [2]], args_array=[{"b": 10}, {}]) == ((11,), (2,))
    with pytest.raises(ValueError, match="as long as each other"):
        xme.funs(funum_array=[0], tagr_array=[[1], [2]])
    with pytest.raises(TypeError, match="positional arguments go in tagr_array"):
        xme.funs(funum_array=[0], tagr_array=[[1]], args_array=[[1]])
    with pytest.raises(IndexError, match="not a function of this XME object"):
        xme.funs(funum_array=[2], tagr_array=[[1]], args_array=[{}])
    with pytest.raises(TypeError, match="is not a function index"):
        xme.funs(funum_array=["0"], tagr_array=[[1]], args_array=[{}])
    with pytest.raises(TypeError):
        XME.XME(lambda: 0, unknown_option=1)
    with pytest.raises(ValueError):
        XME.XME(lambda: 0, errors="ignore")
    assert 1 <= XME.XME(lambda: 0, pnum=10_000).pnum <= os.cpu_count()


def test_the_print_special_parameter_is_the_xme_logger(capfd):
    def task(i, print=print):
        print("call", i, "of", 3, sep="/", msgtype="Step" if i else None, indent=i)
        print("no pid", pid=None)

    XME.XME(task, pnum=1).fun(XME.Array(range(2)))
    lines = capfd.readouterr().out.splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\(pid@\d+\):call/0/of/3", lines[0]), lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d:no pid", lines[1]), lines
    assert re.fullmatch(r"\(Step\)\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\(pid@\d+\):----call/1/of/3", lines[2]), lines
    # do_with_log=False: the function's own print (the built-in) is used.
    XME.XME(task, pnum=1, do_with_log=False).fun(XME.Array([5]))
    with pytest.raises(TypeError):
        XME.Logputter().write_log("x", colour="red")


def test_the_same_function_twice_and_a_builtin():
    assert XME.XME(len).fun(XME.Array(["ab", "c"])) == (2, 1)
    assert XME.XME(pow, pnum=2).funs(funum_array=[0, 0], tagr_array=[[2, XME.Array([3, 4])], [3, 2]],
                                     args_array=[{}, {}]) == ((8, 16), (9,))


def test_a_task_may_run_a_batch_of_its_own(no_leftover_children):
    def inner(x):
        return x * 2

    def outer(n):
        return sum(XME.XME(inner, pnum=2).fun(XME.Array(range(n))))

    assert XME.XME(outer, pnum=2).fun(XME.Array([3, 4, 5])) == (6, 12, 20)


def test_a_batch_too_large_for_the_machine_is_a_clear_error_not_an_abort():
    # In a process of its own: before the fix, the allocation aborted it.
    code = r'''
import XME
x = XME.XME(lambda: 1)
for calnum in (2**40, 10**20):
    try:
        x.fun(calnum=calnum)
    except (ValueError, OverflowError) as e:
        print(f"{type(e).__name__}: {e}")
print(len(XME.XME(lambda: 1, pnum=2).fun(calnum=1000)))
'''
    out = run_script(code)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ValueError: a batch of 1099511627776 calls needs about"), lines
    assert "run the work in smaller batches" in lines[0]
    assert lines[1].startswith("OverflowError: a batch of 100000000000000000000 calls"), lines
    assert lines[2] == "1000"


@pytest.mark.parametrize("options,error,text", [
    ({"pnum": 0}, ValueError, "pnum must be at least 1"),
    ({"pnum": -5}, ValueError, "pnum must be at least 1"),
    ({"pnum": 2.0}, TypeError, "pnum must be an int"),
    ({"timeout": "1"}, TypeError, "timeout must be a number of seconds"),
    ({"timeout": 0}, ValueError, "timeout must be a finite number of seconds"),
    ({"timeout": float("inf")}, ValueError, "timeout must be a finite number of seconds"),
    ({"timeout": float("nan")}, ValueError, "timeout must be a finite number of seconds"),
    ({"timeout": 1e300}, ValueError, "timeout must be a finite number of seconds"),
    ({"timeout": 1e-12}, ValueError, "timeout must be a finite number of seconds"),
])
def test_bad_options_are_clear_python_errors(options, error, text):
    with pytest.raises(error, match=text):
        XME.XME(abs, **options)


@pytest.mark.parametrize("call,error,text", [
    (lambda x: x.fun(calnum=-1), ValueError, "calnum must be a number of calls"),
    (lambda x: x.fun(calnum="3"), TypeError, "calnum must be a number of calls"),
    (lambda x: x.funs(funum_array=0), TypeError, "funum_array must be a list"),
])
def test_bad_call_arguments_are_clear_python_errors(call, error, text):
    with pytest.raises(error, match=text):
        call(XME.XME(lambda: 1))


@pytest.mark.parametrize("options,error,text", [
    ({"indent": -1}, ValueError, "indent must be a number of levels"),
    ({"indent": "2"}, TypeError, "indent must be a number of levels"),
    ({"pid": -1}, ValueError, "pid must be a process id"),
    ({"pid": "abc"}, TypeError, "pid must be a process id"),
    ({"sep": 1}, TypeError, "sep must be None or a string"),
])
def test_bad_write_log_options_are_clear_python_errors(options, error, text):
    with pytest.raises(error, match=text):
        XME.Logputter(print_in_screen=False).write_log("x", **options)


def test_msgtype_false_means_no_type(capfd):
    XME.Logputter().write_log("plain", msgtype=False)
    XME.Logputter().write_log("typed", msgtype=True)
    out = capfd.readouterr().out.splitlines()
    assert not out[0].startswith("(") and out[0].endswith(":plain"), out
    assert out[1].startswith("(Message)") and out[1].endswith(":typed"), out


def test_a_batch_error_survives_pickling():
    import pickle

    with pytest.raises(XME.BatchError) as caught:
        XME.XME(lambda i: 1 / i, errors="raise").fun(XME.Array([0, 1]))
    back = pickle.loads(pickle.dumps(caught.value))
    assert type(back) is XME.BatchError
    assert back.results == ((None, 1.0),)
    assert [(f.call, f.kind, f.exc_type) for f in back.failures] == [
        (0, "exception", "ZeroDivisionError")]
    assert str(back) == str(caught.value)


def test_parameters_kept_per_function_follow_every_change_inspect_would_see():
    # XME keeps each function's parameters between batches (reading them
    # again costs more than a small batch right after a fork); what it
    # keeps must always equal a fresh read, wrappers included.
    import functools
    import inspect

    def kept(f):
        return XME.XME(f, pnum=1)._parameters[0].names

    def fresh(f):
        try:
            parameters = inspect.signature(f).parameters.items()
        except (TypeError, ValueError):  # no signature: no parameters XME can name
            return set()
        return {n for n, p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def check(f, change):
        assert kept(f) == fresh(f)
        change()
        assert kept(f) == fresh(f), change

    def f1(a, print=None): return a
    def g1(a, logobj=None): return a
    check(f1, lambda: setattr(f1, "__code__", g1.__code__))
    def f2(a): return a
    check(f2, lambda: setattr(f2, "__signature__", inspect.signature(lambda b, print=None: 0)))
    def inner3(a, print=None): return a
    w3 = functools.wraps(inner3)(lambda *a, **k: inner3(*a, **k))
    check(w3, lambda: setattr(inner3, "__code__", g1.__code__))
    def inner4(a): return a
    w4 = functools.wraps(inner4)(lambda *a, **k: inner4(*a, **k))
    check(w4, lambda: setattr(inner4, "__signature__", inspect.signature(lambda a, print=None: 0)))
    def inner5(a): return a
    mid5 = functools.wraps(inner5)(lambda *a, **k: inner5(*a, **k))
    w5 = functools.wraps(mid5)(lambda *a, **k: mid5(*a, **k))
    check(w5, lambda: setattr(inner5, "__code__", f1.__code__))
    def inner6(a, print=None): return a
    w6 = functools.wraps(inner6)(lambda *a, **k: inner6(*a, **k))
    check(w6, lambda: delattr(w6, "__wrapped__"))
    # None is not absence: inspect stops at __signature__ = None and
    # follows __wrapped__ = None (to no parameters).
    for attribute in ("__signature__", "__wrapped__"):
        def inner8(a, print=None): return a
        w8 = functools.wraps(inner8)(lambda *a, **k: inner8(*a, **k))
        setattr(w8, attribute, None)
        check(w8, lambda: delattr(w8, attribute))

    # End to end: the wrapped function now takes logobj, not print.
    def inner7(a, print=None): return ("print" if print is not None else "-", a)
    w7 = functools.wraps(inner7)(lambda *a, **k: inner7(*a, **k))
    assert XME.XME(w7, pnum=1, print_in_screen=False).fun(XME.Array([1])) == (("print", 1),)
    def other7(a, logobj=None): return ("logobj" if logobj is not None else "-", a)
    inner7.__code__ = other7.__code__
    assert XME.XME(w7, pnum=1, print_in_screen=False, errors="raise").fun(XME.Array([1])) == (
        ("logobj", 1),)
