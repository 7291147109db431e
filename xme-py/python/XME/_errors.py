"""What a failed call left behind, and the exception ``errors="raise"`` raises."""

import signal as _signal

from ._xme import XMEError


class CallFailure:
    """One call that gave no result: which call, of which function, and why.

    ``kind`` is one of:

    - ``"exception"``: the call raised; ``exc_type``, ``message`` and
      ``traceback`` (the text Python prints) say what, and ``exception`` is
      the exception object itself when it could be pickled and unpickled;
    - ``"signal"``: its worker was killed by signal ``signal`` (9 for
      ``SIGKILL``, 11 for a segmentation fault, ...);
    - ``"exit"``: its worker exited (``os._exit``) with ``exit_code`` before
      returning;
    - ``"timeout"``: it ran past the ``timeout`` given to ``XME.XME``;
    - ``"result"``: it returned, but its result could not cross back
      (``message`` says why: not picklable, or not unpicklable);
    - ``"lost"``: xme lost it (``message`` says how).
    """

    __slots__ = (
        "function", "funum", "name", "call", "kind", "exc_type", "message",
        "traceback", "exception", "signal", "exit_code", "timeout",
    )

    def __init__(self, function, funum, name, call, kind, *, exc_type=None,
                 message="", traceback=None, exception=None, signal=None,
                 exit_code=None, timeout=None):
        self.function = function  # index in this batch's table (funum_array order)
        self.funum = funum  # index in the XME object's function table
        self.name = name
        self.call = call
        self.kind = kind
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback
        self.exception = exception
        self.signal = signal
        self.exit_code = exit_code
        self.timeout = timeout

    def how(self):
        """What happened, in a few words."""
        if self.kind == "exception":
            return f"{self.exc_type}: {self.message}" if self.message else self.exc_type
        if self.kind == "result":
            return f"it returned, but {self.message}"
        if self.kind == "signal":
            try:
                name = _signal.Signals(self.signal).name
            except ValueError:
                name = "unknown signal"
            return f"its worker was killed by signal {self.signal} ({name})"
        if self.kind == "exit":
            return f"its worker exited with status {self.exit_code} before returning"
        if self.kind == "timeout":
            return f"it ran past its timeout of {self.timeout:g} s; its worker was killed"
        return f"xme lost it: {self.message}"

    def __str__(self):
        return f"call {self.call} of {self.name} (function {self.funum}) failed: {self.how()}"

    def __repr__(self):
        return f"<CallFailure {self}>"


class BatchError(XMEError):
    """Raised by a batch of an ``XME.XME(..., errors="raise")`` object when
    any call failed. It carries every call's outcome:

    - ``results``: what the batch would have returned, ``None`` in the slots
      of failed calls;
    - ``outcomes``: the same shape, holding the value or the ``CallFailure``;
    - ``failures``: the ``CallFailure`` of every failed call, in call order.
    """

    def __init__(self, results, outcomes, failures):
        self.results = results
        self.outcomes = outcomes
        self.failures = tuple(failures)
        shown = "; ".join(str(f) for f in self.failures[:5])
        more = len(self.failures) - 5
        if more > 0:
            shown += f"; and {more} more"
        first_tb = next((f.traceback for f in self.failures if f.traceback), None)
        text = f"{len(self.failures)} call(s) failed: {shown}"
        if first_tb:
            text += "\n\nThe first traceback, from its worker:\n" + first_tb.rstrip()
        super().__init__(text)

    def __reduce__(self):
        # Rebuilt from what __init__ takes (BaseException's default passes
        # self.args, the message, which __init__ does not take).
        return (type(self), (self.results, self.outcomes, self.failures))
