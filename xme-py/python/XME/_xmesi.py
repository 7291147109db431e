"""The standard interface (XMESI, seed section 1): ``XME.XME``, ``Array``,
``fun``, ``funs``, and the special parameters ``print`` and ``logobj``.

A batch forks its workers from this process (``xme_exec::Xme::fun``, in the
compiled ``_xme``): each call's function and arguments are inherited, never
pickled, so lambdas, closures and local functions work; only results come
back, pickled. The parent waits with the GIL released.
"""

import inspect
import math
import numbers
import os
import pickle
import sys
import traceback
import types
import warnings
import weakref
from bisect import bisect_right
from collections.abc import Iterable

from . import _xme
from ._errors import BatchError, CallFailure

#: CPUs this process may use, read once (it reads cgroup files).
_CPUS = _xme.cpu_count()

#: ``_Parameters`` per function (see ``_Parameters.of``).
_PARAMETERS = weakref.WeakKeyDictionary()
#: An attribute a function does not have (``None`` is a value).
_ABSENT = object()

#: The shortest and longest call timeouts (a nanosecond; about 31 years).
_MIN_TIMEOUT, _MAX_TIMEOUT = 1e-9, 1e9


class Array(list):
    """An argument split across calls: call ``i`` gets element ``i``. The
    number of calls is the length of the longest ``Array`` of the call; a
    shorter one gives its last element to the calls past its end."""


class _Parameters:
    """The parameter names of a function, as far as XME needs them."""

    __slots__ = ("names", "var_keyword")

    @staticmethod
    def of(f):
        """``_Parameters(f)``, kept per plain function: ``inspect.signature``
        takes longer than a whole small batch's own work right after a
        fork (it touches many objects, each a page to copy). A kept entry
        is used only while everything the signature is read from is the
        same object: each function's ``__code__`` and ``__signature__`` along
        the ``__wrapped__`` chain ``inspect.signature`` follows."""
        key = _signature_sources(f)
        if key is None:
            return _Parameters(f)
        kept = _PARAMETERS.get(f)
        if kept is not None and len(kept[0]) == len(key) and all(
                a is b for a, b in zip(kept[0], key)):
            return kept[1]
        params = _Parameters(f)
        _PARAMETERS[f] = (key, params)
        return params

    def __init__(self, f):
        self.names = set()
        self.var_keyword = None
        try:
            params = inspect.signature(f).parameters.values()
        except (TypeError, ValueError):  # a builtin without a signature
            return
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                self.names.add(p.name)
            elif p.kind == p.VAR_KEYWORD:
                self.var_keyword = p.name


def _signature_sources(f, depth=8):
    """What ``inspect.signature(f)`` reads, as a tuple of objects, or None
    when ``f`` is not a chain of plain functions (then nothing is kept).
    Like ``inspect``, it stops at a function that has a ``__signature__``
    (even ``None``) and follows ``__wrapped__`` while there is one; an
    attribute's absence is part of the key, told apart from ``None``."""
    sources = []
    for _ in range(depth):
        if type(f) is not types.FunctionType:
            return None
        attributes = f.__dict__
        signature = attributes.get("__signature__", _ABSENT)
        wrapped = attributes.get("__wrapped__", _ABSENT)
        sources += (f.__code__, signature, wrapped)
        if signature is not _ABSENT or wrapped is _ABSENT:
            return tuple(sources)
        f = wrapped
    return None


def _pick(arg, i):
    if isinstance(arg, Array):
        return arg[i] if i < len(arg) else arg[-1]
    return arg


class _Job:
    """One row of the executions table: a function, its arguments and the
    number of its calls. Call ``i``'s arguments are made in the worker."""

    __slots__ = ("function", "funum", "f", "name", "targ", "kwargs", "calnum")

    def __init__(self, function, funum, f, params, targ, kwargs, logobj):
        self.function, self.funum, self.f = function, funum, f
        self.name = getattr(f, "__qualname__", None) or repr(f)
        kwargs = dict(kwargs)
        # XME 4.2's special keyword: the number of calls.
        # (Passed on too when the function has a parameter of that name.)
        calnum = kwargs.get("calnum") if "calnum" in params.names else kwargs.pop("calnum", None)
        # Seed 1.2.2, note 1: keywords for a **kwargs parameter given as one
        # dict under its name (kwargs={...}) reach it as keywords.
        vk = params.var_keyword
        if vk and vk not in params.names and isinstance(kwargs.get(vk), dict):
            for key, value in kwargs.pop(vk).items():
                kwargs.setdefault(key, value)
        # Seed 1.3: the special parameters reach the functions that name them.
        if logobj is not None:
            if "print" in params.names:
                kwargs.setdefault("print", logobj.write_log)
            if "logobj" in params.names:
                kwargs.setdefault("logobj", logobj)
        self.targ, self.kwargs = tuple(targ), kwargs
        arrays = [a for a in (*self.targ, *kwargs.values()) if isinstance(a, Array)]
        if calnum is None:
            calnum = max(map(len, arrays)) if arrays else 1
        elif isinstance(calnum, bool) or not isinstance(calnum, int):
            raise TypeError(f"calnum must be a number of calls (an int >= 0), not {calnum!r}")
        elif calnum < 0:
            raise ValueError(f"calnum must be a number of calls (an int >= 0), not {calnum!r}")
        if calnum and any(not a for a in arrays):
            raise ValueError(
                f"{self.name}: an XME.Array argument is empty, so it has nothing to give "
                f"calls 0..{calnum - 1}; give it at least one element")
        self.calnum = calnum

    def call(self, i):
        """In a worker: runs call ``i``."""
        args = tuple(_pick(a, i) for a in self.targ)
        kwargs = {k: _pick(v, i) for k, v in self.kwargs.items()}
        return self.f(*args, **kwargs)


def _flush_std_streams():
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a closed or broken stream: nothing to keep
            pass  # (KeyboardInterrupt is no Exception: it propagates)


def _user_frames(tb):
    """The traceback from the first frame outside this module (XME's own
    call wrapper is not the user's concern)."""
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


def _failure_record(kind, e, note=None):
    """A failed call's reply: ``b"E"`` and the pickled record."""
    try:
        text = "".join(traceback.format_exception(type(e), e, _user_frames(e.__traceback__)))
    except BaseException:  # noqa: BLE001 - a broken __str__ must not lose the call
        text = f"{type(e).__qualname__} (its traceback could not be formatted)\n"
    try:
        message = str(e)
    except BaseException:  # noqa: BLE001
        message = "(its message could not be formatted)"
    if note:
        message = f"{note}: {message}" if message else note
    try:
        exc = pickle.dumps(e, pickle.HIGHEST_PROTOCOL)
    except BaseException:  # noqa: BLE001 - the text is enough
        exc = None
    exc_type = f"{type(e).__module__}.{type(e).__qualname__}".replace("builtins.", "")
    return b"E" + pickle.dumps((kind, exc_type, message, text, exc), pickle.HIGHEST_PROTOCOL)


def _run_call(job, i):
    """In a worker: runs call ``i`` of ``job`` and returns its reply:
    ``b"V"`` and the pickled value, or a failure record. Never raises."""
    try:
        try:
            value = job.call(i)
        except BaseException as e:  # noqa: BLE001 - 4.2 catches everything too
            return _failure_record("exception", e)
        try:
            return b"V" + pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except BaseException as e:  # noqa: BLE001
            return _failure_record(
                "result", e, f"its result ({type(value).__qualname__}) could not be pickled")
    finally:
        # Before the next call, and before the worker leaves with _exit.
        _flush_std_streams()


def _outcome(job, call, reply):
    """The parent's reading of one reply: (True, value) or (False, CallFailure)."""
    fail = lambda kind, **kw: (False, CallFailure(  # noqa: E731
        job.function, job.funum, job.name, call, kind, **kw))
    if isinstance(reply, tuple):
        kind, detail = reply
        if kind == "signal":
            return fail("signal", signal=detail)
        if kind == "exit":
            return fail("exit", exit_code=detail)
        if kind == "timeout":
            return fail("timeout", timeout=detail)
        return fail("lost", message=str(detail))
    tag, body = reply[:1], memoryview(reply)[1:]
    if tag == b"V":
        try:
            return True, pickle.loads(body)
        except Exception as e:  # noqa: BLE001
            return fail("result", exc_type=type(e).__qualname__,
                        message=f"its result could not be unpickled here: {e}")
    if tag == b"E":
        kind, exc_type, message, text, exc = pickle.loads(body)
        try:
            exception = pickle.loads(exc) if exc is not None else None
        except Exception:  # noqa: BLE001 - an exception class that will not rebuild
            exception = None
        return fail(kind, exc_type=exc_type, message=message, traceback=text,
                    exception=exception)
    return fail("lost", message=bytes(body).decode("utf-8", "replace"))


class XME:
    """The standard interface: a table of functions run over forked worker
    processes.

    ``XME(fun1, fun2, ..., pnum=cpus, do_with_log=True, logfile=None,
    show_version_info=False, print_in_screen=True, errors="log", timeout=None,
    spawn="on_demand")``

    - ``pnum``: most worker processes at once (at least 1; more than the CPUs
      is clamped to the CPUs);
    - ``do_with_log``: tasks get the XME logger as their ``print`` /
      ``logobj`` parameters, and failed calls are logged through it;
    - ``logfile``: also append log lines to this file;
    - ``show_version_info``: log the version when the object is made;
    - ``print_in_screen``: write log lines to the screen;
    - ``errors``: ``"log"`` (XME 4.2's way: a failed call's slot is
      ``None`` and the log says which call failed and how) or ``"raise"``
      (a batch with a failed call raises ``XME.BatchError``, which carries
      every call's outcome);
    - ``timeout``: seconds a call may run before its worker is killed;
    - ``spawn``: ``"on_demand"`` (a worker for each call at once when there
      are no more calls than ``pnum``; else one first, and more, up to
      ``pnum``, while the calls left would keep them busy longer than a
      fork takes: short calls cost one fork, long ones reach a second
      worker within a few ms) or ``"eager"`` (``pnum`` workers forked at
      once, as XME 4.2 does).
    """

    Array = Array

    def __init__(self, *fun, pnum=None, do_with_log=True, logfile=None,
                 show_version_info=False, print_in_screen=True, errors="log",
                 timeout=None, spawn="on_demand"):
        for i, f in enumerate(fun):
            if not callable(f):
                raise TypeError(f"XME.XME: function {i} is not callable: {f!r}")
        if errors not in ("log", "raise"):
            raise ValueError(f'errors must be "log" or "raise", not {errors!r}')
        if spawn not in ("on_demand", "eager"):
            raise ValueError(f'spawn must be "on_demand" or "eager", not {spawn!r}')
        cpus = _CPUS
        if pnum is None:
            pnum = cpus
        elif isinstance(pnum, bool) or not isinstance(pnum, int):
            raise TypeError(f"pnum must be an int, not {pnum!r}")
        elif pnum < 1:
            raise ValueError(f"pnum must be at least 1 (the most worker processes at once), "
                             f"not {pnum!r}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
                raise TypeError(f"timeout must be a number of seconds (an int or a float), "
                                f"not {timeout!r}")
            if not (math.isfinite(timeout) and _MIN_TIMEOUT <= timeout <= _MAX_TIMEOUT):
                raise ValueError(f"timeout must be a finite number of seconds from "
                                 f"{_MIN_TIMEOUT:g} to {_MAX_TIMEOUT:g}, not {timeout!r} "
                                 f"(no timeout: leave it None)")
        self.functions = fun
        self.pnum = min(max(pnum, 1), cpus)
        self.errors = errors
        self.spawn = spawn
        self.timeout = None if timeout is None else float(timeout)
        self.logobj = _xme.Logputter(logfile, show_version_info, print_in_screen) if do_with_log else None
        self._parameters = [_Parameters.of(f) for f in fun]

    def fun(self, *targ, **args):
        """Calls the first (top) function of the table once per call of its
        arguments' split (``XME.Array`` arguments), in worker processes, and
        returns the results as a tuple in call order."""
        if not self.functions:
            raise TypeError("this XME object has no function: give XME.XME(f, ...) one")
        return self._batch([self._job(0, 0, targ, args)])[0]

    __call__ = fun

    def funs(self, funum_array=None, tagr_array=None, args_array=None):
        """Runs several functions of the table at once (the multi-function
        model): ``funum_array`` lists which (default: all), ``tagr_array[i]``
        is the positional arguments and ``args_array[i]`` the keyword
        arguments of the ``i``-th. Returns one tuple of results per entry of
        ``funum_array``."""
        n = len(self.functions)
        if funum_array is not None and not isinstance(funum_array, Iterable):
            raise TypeError(f"funs: funum_array must be a list of function indexes, "
                            f"not {funum_array!r}")
        funum_array = list(range(n) if funum_array is None else funum_array)
        tagr_array = [[] for _ in funum_array] if tagr_array is None else list(tagr_array)
        args_array = [{} for _ in funum_array] if args_array is None else list(args_array)
        if not len(funum_array) == len(tagr_array) == len(args_array):
            raise ValueError(
                f"funs: funum_array, tagr_array and args_array must be as long as each other "
                f"(one entry per call of the table), not {len(funum_array)}, "
                f"{len(tagr_array)} and {len(args_array)}")
        for i, (targ, args) in enumerate(zip(tagr_array, args_array)):
            if not isinstance(targ, (list, tuple)):
                raise TypeError(f"funs: tagr_array[{i}] must be a list of positional "
                                f"arguments, not {targ!r}")
            if not isinstance(args, dict):
                raise TypeError(f"funs: args_array[{i}] must be a dict of keyword arguments, "
                                f"not {args!r} (positional arguments go in tagr_array)")
        jobs = []
        for i, funum in enumerate(funum_array):
            if isinstance(funum, bool) or not isinstance(funum, int):
                raise TypeError(f"funs: funum_array[{i}] = {funum!r} is not a function index "
                                f"(an int, 0 for the first function of the table)")
            if not -n <= funum < n:
                raise IndexError(f"funs: funum_array[{i}] = {funum!r} is not a function of "
                                 f"this XME object (it has {n})")
            jobs.append(self._job(i, funum % n, tagr_array[i], args_array[i]))
        return self._batch(jobs)

    def gfun(self, *args, **kwargs):
        raise NotImplementedError(
            "gfun runs with an XMEManager (seed section 2), which xme's Python face "
            "does not have yet")

    gfuns = gfun

    def clean(self):
        """XME 4.2 kept its executors here; xme keeps nothing between batches."""

    def _job(self, function, funum, targ, args):
        return _Job(function, funum, self.functions[funum], self._parameters[funum],
                    targ, args, self.logobj)

    def _batch(self, jobs, _finalizing=sys.is_finalizing, _error=_xme.XMEError):
        """Runs every call of ``jobs``; one tuple of results per job.
        (The defaults outlive this module's globals, which an interpreter
        that is shutting down clears.)"""
        if _finalizing():
            raise _error(
                "the interpreter is shutting down, so XME cannot start a batch: run it "
                "before the program ends (not from a __del__ or a finalizer that runs at exit)")
        offsets, total = [], 0
        for job in jobs:
            offsets.append(total)
            total += job.calnum
        if total > sys.maxsize:
            raise OverflowError(
                f"a batch of {total} calls is more than this machine can count "
                f"(at most {sys.maxsize}); run the work in smaller batches")
        replies = []
        if total:
            _warn_if_threaded()
            # Here, where Ctrl-C during a flush blocked on a full pipe raises
            # before any fork (the fork hook flushes again, for each worker).
            _flush_std_streams()

            def run_call(g):
                j = bisect_right(offsets, g) - 1
                return _run_call(jobs[j], g - offsets[j])

            replies = _xme.run_batch(total, run_call, pnum=self.pnum,
                                     timeout=self.timeout, logger=self.logobj,
                                     eager=self.spawn == "eager")
        results, outcomes, failures = [], [], []
        for job, first in zip(jobs, offsets):
            values, slots = [], []
            for call in range(job.calnum):
                ok, value = _outcome(job, call, replies[first + call])
                values.append(value if ok else None)
                slots.append(value)
                if not ok:
                    failures.append(value)
            results.append(tuple(values))
            outcomes.append(tuple(slots))
        if failures:
            if self.errors == "raise":
                raise BatchError(tuple(results), tuple(outcomes), failures)
            for failure in failures:
                self._log_failure(failure)
        return tuple(results)

    def _log_failure(self, failure):
        text = f"{failure}"
        if failure.traceback:
            text += "\n" + failure.traceback.rstrip()
        if self.logobj is not None:
            self.logobj.write_log(text, msgtype="Error")
        else:
            print(text, file=sys.stderr, flush=True)


def build(*fun, **options):
    """``XME.build(f, ...)``: the same as ``XME.XME(f, ...)``."""
    return XME(*fun, **options)


def _warn_if_threaded():
    n = _xme.thread_count()
    if n > 1:
        # As os.fork does since Python 3.12, but visible by default.
        warnings.warn(
            f"This process (pid={os.getpid()}) is multi-threaded ({n} threads), use of "
            f"XME's fork() may lead to deadlocks in the child: a worker has only the "
            f"forking thread, so a lock another thread held at the fork stays held there.",
            RuntimeWarning, stacklevel=4)
