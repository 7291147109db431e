"""XME for Python, on xme: the standard interface of XME 4.2 (seed section 1),
with workers forked by xme (Rust).

    import XME

    def fun(v): return sum([i for i in range(v+1, v+11)])

    if __name__ == "__main__":
        xme = XME.XME(fun, pnum=2)
        print(sum(xme.fun(xme.Array([v*10 for v in range(10)]))))  # 5050

Every batch forks its workers from the calling process, so functions and
arguments are inherited, never pickled: lambdas, closures and local
functions work. Results come back pickled. A failed call gives ``None`` in
its slot and a log line saying which call failed and how (its traceback, the
signal that killed its worker, its exit status), or, with
``XME.XME(..., errors="raise")``, an ``XME.BatchError`` carrying every
call's outcome. Ctrl-C stops a batch, kills and reaps its workers and
raises ``KeyboardInterrupt``.

``XME.Manager`` (seed section 2) and ``XME.MPI`` (section 3) keep their
places but are not here yet.
"""

import sysconfig as _sysconfig

if _sysconfig.get_config_var("Py_GIL_DISABLED"):
    # Checked before loading the compiled module, which an abi3 build cannot
    # be on a free-threaded interpreter anyway.
    raise ImportError(
        "XME (xme-py) does not support free-threaded CPython builds yet: it forks while "
        "holding the GIL, as CPython's os.fork does, and a build without a GIL has not "
        "been made safe for that. Use a standard CPython build (python3.x, not python3.xt)."
    )

from ._xme import XME_VERSION, Logputter, XMEError  # noqa: E402
from ._errors import BatchError, CallFailure  # noqa: E402
from ._xmesi import XME, Array, build  # noqa: E402

#: The seed calls the logger both names.
Logger = Logputter

__version__ = XME_VERSION

__all__ = ["XME", "Array", "build", "Logputter", "Logger", "XMEError", "BatchError",
           "CallFailure", "XME_VERSION"]
