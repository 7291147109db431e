"""The Python peer of benches/pool_stream.rs: multiprocessing.Pool(2).

A long-lived helper: it makes the pool once, then for each request line
"imap_unordered N CHUNK" (or "imap N CHUNK") maps a trivial function over
range(N) and answers with the elapsed nanoseconds of the map alone, so the
interpreter's and the pool's start-up are not timed.
"""
import multiprocessing
import sys
import time


def trivial(x):
    return x + 1


def main():
    multiprocessing.set_start_method("fork")
    with multiprocessing.Pool(2) as pool:
        # Warm the workers.
        sum(pool.imap_unordered(trivial, range(10_000), chunksize=1000))
        print("ready", flush=True)
        for line in sys.stdin:
            kind, n, chunk = line.split()
            n, chunk = int(n), int(chunk)
            t = time.perf_counter_ns()
            if kind == "imap_unordered":
                total = sum(pool.imap_unordered(trivial, range(n), chunksize=chunk))
            else:
                total = sum(pool.imap(trivial, range(n), chunksize=chunk))
            elapsed = time.perf_counter_ns() - t
            assert total == n * (n + 1) // 2, total
            print(elapsed, flush=True)


if __name__ == "__main__":
    main()
