"""XME on xme beside its peers, measured in one run (issue #29's targets).

    python compare.py --xme425 /path/to/venv-with-XME-4.2.5/bin/python [--rounds 15]

Run with the interpreter that has xme's XME installed. Workloads:

- ``trivial``: 10 trivial calls at pnum 2, a whole batch as a user writes it
  (``XME.XME(f, pnum=2).fun(xme.Array(range(10)))``): xme (which forks one
  worker for calls this short), and with ``spawn="eager"`` (both forked);
  XME 4.2.5; a pure-Python ``os.fork`` loop doing the same work (2
  children, 5 calls each, results pickled back through pipes: the floor of
  fork per batch), and the same loop with one child doing all 10;
  ``multiprocessing.Pool(2).map`` with the pool made per batch.
- ``cpu``: the sum of 1..10^8 split into 2 calls: xme against
  ``multiprocessing.Pool(2).map`` (pool made per batch, as xme forks per
  batch).

Each contender runs in a process of its own (XME 4.2.5 needs its own
environment), in blocks that alternate round by round, so that the noise of
a shared machine falls on every contender alike. Medians are printed, with
the ratios the issue names.
"""

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import time

TRIVIAL_CALLS, PNUM = 10, 2
CPU_N = 10**8


def trivial(v):
    return v + 1


def partial_sum(bounds):
    lo, hi = bounds
    return sum(range(lo, hi))


CPU_SPLIT = [(1, CPU_N // 2 + 1), (CPU_N // 2 + 1, CPU_N + 1)]


def run_xme():
    import XME
    xme = XME.XME(trivial, pnum=PNUM)
    return xme.fun(xme.Array(range(TRIVIAL_CALLS)))


def run_xme_cpu():
    import XME
    xme = XME.XME(partial_sum, pnum=PNUM)
    return sum(xme.fun(xme.Array(CPU_SPLIT)))


def run_pool():
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(PNUM) as pool:
        return tuple(pool.map(trivial, range(TRIVIAL_CALLS)))


def run_pool_cpu():
    import multiprocessing
    with multiprocessing.get_context("fork").Pool(PNUM) as pool:
        return sum(pool.map(partial_sum, CPU_SPLIT))


def run_xme_eager():
    import XME
    xme = XME.XME(trivial, pnum=PNUM, spawn="eager")
    return xme.fun(xme.Array(range(TRIVIAL_CALLS)))


def run_fork_loop(children_count=PNUM):
    """The floor: fork PNUM children, each runs its share of the calls and
    pickles its results back through a pipe; the parent reads and reaps.
    XME is imported (not used) so that the process forked is the same size
    as xme's: the comparison is of the work, not of what is loaded."""
    import XME  # noqa: F401
    children = []
    for k in range(children_count):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            out = pickle.dumps([(i, trivial(i))
                                for i in range(k, TRIVIAL_CALLS, children_count)])
            with os.fdopen(w, "wb") as f:
                f.write(out)
            os._exit(0)
        os.close(w)
        children.append((pid, r))
    results = [None] * TRIVIAL_CALLS
    for pid, r in children:
        with os.fdopen(r, "rb") as f:
            for i, v in pickle.loads(f.read()):
                results[i] = v
        os.waitpid(pid, 0)
    return tuple(results)


def run_fork_loop1():
    """The same floor with one child running all the calls: what xme's
    on-demand fan-out does for calls this short."""
    return run_fork_loop(1)


def run_xme425():
    import XME
    xme = XME.XME(trivial, pnum=PNUM)
    return xme.fun(xme.Array(range(TRIVIAL_CALLS)))


CONTENDERS = {
    "xme": run_xme,
    "xme_eager": run_xme_eager,
    "xme425": run_xme425,
    "fork_loop": run_fork_loop,
    "fork_loop1": run_fork_loop1,
    "pool": run_pool,
    "xme_cpu": run_xme_cpu,
    "pool_cpu": run_pool_cpu,
}
EXPECTED = {
    "xme": tuple(range(1, 11)), "xme_eager": tuple(range(1, 11)),
    "xme425": tuple(range(1, 11)), "fork_loop": tuple(range(1, 11)),
    "fork_loop1": tuple(range(1, 11)), "pool": tuple(range(1, 11)),
    "xme_cpu": CPU_N * (CPU_N + 1) // 2, "pool_cpu": CPU_N * (CPU_N + 1) // 2,
}


def block(name, n):
    """In a contender's process: one warm-up, then n timed batches."""
    f = CONTENDERS[name]
    if f() != EXPECTED[name]:
        raise SystemExit(f"{name} gave a wrong result: {f()!r}")
    times = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    print(json.dumps(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--xme425", help="a Python with XME 4.2.5 installed")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-block", type=int, default=5)
    ap.add_argument("--cpu-rounds", type=int, default=5)
    ap.add_argument("--block", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.block:
        return block(args.block, args.per_block)

    here = os.path.abspath(__file__)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}

    def timed(python, name, rounds, per_block):
        out = subprocess.run([python, here, "--block", name, "--per-block", str(per_block)],
                             capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{name} failed:\n{out.stderr}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    trivial_contenders = [(sys.executable, "xme"), (sys.executable, "fork_loop"),
                          (sys.executable, "xme_eager"), (sys.executable, "fork_loop1"),
                          (sys.executable, "pool")]
    if args.xme425:
        trivial_contenders.append((args.xme425, "xme425"))
    samples = {name: [] for _, name in trivial_contenders}
    for _ in range(args.rounds):
        for python, name in trivial_contenders:
            samples[name] += timed(python, name, args.rounds, args.per_block)
    for _ in range(args.cpu_rounds):
        for name in ("xme_cpu", "pool_cpu"):
            samples.setdefault(name, []).extend(timed(sys.executable, name, 1, 1))

    med = {name: statistics.median(ts) for name, ts in samples.items()}
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; medians of "
          f"{args.rounds * args.per_block} batches (trivial), {args.cpu_rounds} (cpu)")
    labels = {
        "xme": "xme: XME.XME(f, pnum=2).fun, 10 trivial calls",
        "fork_loop": "pure-Python os.fork loop, same work (the floor)",
        "xme_eager": "xme, spawn=\"eager\" (both workers forked)",
        "fork_loop1": "the os.fork loop with one child doing all 10",
        "pool": "multiprocessing.Pool(2).map, pool made per batch",
        "xme425": "XME 4.2.5: XME.XME(f, pnum=2).fun",
        "xme_cpu": "xme: sum of 1..10^8 in 2 calls",
        "pool_cpu": "multiprocessing.Pool(2).map, same 2 calls",
    }
    for name, m in med.items():
        print(f"  {labels[name]:<52} {m * 1e3:9.2f} ms")
    print("ratios:")
    print(f"  xme / fork loop (target <= 1.5):      {med['xme'] / med['fork_loop']:.2f}")
    print(f"  xme / one-child fork loop:             {med['xme'] / med['fork_loop1']:.2f}")
    print(f"  xme eager / fork loop:                 {med['xme_eager'] / med['fork_loop']:.2f}")
    if "xme425" in med:
        print(f"  XME 4.2.5 / xme (target >= 10):        {med['xme425'] / med['xme']:.1f}")
    print(f"  xme / Pool(2).map, trivial:            {med['xme'] / med['pool']:.2f}")
    print(f"  xme / Pool(2).map, cpu (target <= ~1): {med['xme_cpu'] / med['pool_cpu']:.3f}")


if __name__ == "__main__":
    main()
