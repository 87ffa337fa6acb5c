#!/usr/bin/env python3
"""The benchmarks' questions answered by Python's concurrent.futures.

The same work as benches/thread_pool.rs and benches/process_pool.rs, with
ThreadPoolExecutor and ProcessPoolExecutor (standard library only). Prints one
JSON object per line:

    {"group": ..., "peer": ..., "value": ..., "unit": ..., "n": ..., "runs": [...]}

`value` is the mean over the timed runs (one untimed warm-up run first), in
the unit the report uses: ns per task, ms per run, or MiB/s. Where a run of
the full size would take Python too long, `n` says how many tasks a run holds;
the unit is per task, so it compares with the Rust numbers all the same.

Usage: python3 benches/python_peer.py [--quick]
"""

import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

QUICK = "--quick" in sys.argv[1:]


def inc(x):
    """The trivial task (module level, so worker processes can find it)."""
    return x + 1


def length(b):
    return len(b)


def expected(n):
    return n * (n + 1) // 2  # sum of inc(i) for i in range(n)


def emit(group, peer, unit, n, runs, value):
    print(
        json.dumps(
            {
                "group": group,
                "peer": peer,
                "value": value,
                "unit": unit,
                "n": n,
                "runs": runs,
            }
        ),
        flush=True,
    )


def timed(fn, repeats, warm_up=True):
    """Seconds of each of `repeats` runs of fn, after one warm-up run."""
    if warm_up:
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def per_task(group, peer, n, fn, repeats):
    runs = [s * 1e9 / n for s in timed(fn, repeats)]
    emit(group, peer, "ns/task", n, runs, sum(runs) / len(runs))


def per_run_ms(group, peer, n, fn, repeats):
    runs = [s * 1e3 for s in timed(fn, repeats)]
    emit(group, peer, "ms", n, runs, sum(runs) / len(runs))


def per_item(group, peer, n, fn, repeats, warm_up=True):
    runs = [s * 1e9 / n for s in timed(fn, repeats, warm_up)]
    emit(group, peer, "ns/item", n, runs, sum(runs) / len(runs))


def q1(repeats):
    n = 20_000 if QUICK else 100_000
    with ThreadPoolExecutor(2) as ex:

        def all_then_results():
            fs = [ex.submit(inc, i) for i in range(n)]
            assert sum(f.result() for f in fs) == expected(n)

        per_task("q1_thread_submit_result", "python_ThreadPoolExecutor", n, all_then_results, repeats)

        m = 2_000 if QUICK else 10_000

        def one_at_a_time():
            assert sum(ex.submit(inc, i).result() for i in range(m)) == expected(m)

        per_task("q1_thread_one_at_a_time", "python_ThreadPoolExecutor", m, one_at_a_time, repeats)


def q2_q3_q5(repeats):
    with ProcessPoolExecutor(1) as ex:
        ex.submit(inc, 0).result()  # the worker is up
        # About 0.3 ms a task on a 2-core machine: 5k tasks a run.
        n = 1_000 if QUICK else 5_000

        def pipelined():
            fs = [ex.submit(inc, i) for i in range(n)]
            assert sum(f.result() for f in fs) == expected(n)

        per_task("q2_process_pipelined", "python_ProcessPoolExecutor", n, pipelined, repeats)

        m = 500 if QUICK else 2_000

        def round_trip():
            assert sum(ex.submit(inc, i).result() for i in range(m)) == expected(m)

        per_task("q3_process_round_trip", "python_ProcessPoolExecutor", m, round_trip, repeats)

        big = bytes(i % 256 for i in range(256)) * ((64 << 20) // 256)

        def transfer():
            assert ex.submit(length, big).result() == len(big)

        runs = [(len(big) / (1 << 20)) / s for s in timed(transfer, repeats)]
        emit(
            "q5_transfer_64mib",
            "python_ProcessPoolExecutor",
            "MiB/s",
            len(big),
            runs,
            # MiB/s of the mean time, as criterion's throughput is.
            len(runs) / sum(1 / r for r in runs),
        )


def q4(repeats):
    n = 100_000 if QUICK else 1_000_000
    with ProcessPoolExecutor(2) as ex:
        ex.submit(inc, 0).result()

        def proc_map():
            assert sum(ex.map(inc, range(n), chunksize=1000)) == expected(n)

        per_item("q4_chunked_map", "python_ProcessPoolExecutor", n, proc_map, repeats)
    # ThreadPoolExecutor.map ignores chunksize: one future per item, about
    # 40 us each here, so this run holds 100k items, once, without warm-up.
    m = n // 10
    with ThreadPoolExecutor(2) as ex:

        def thread_map():
            assert sum(ex.map(inc, range(m), chunksize=1000)) == expected(m)

        per_item("q4_chunked_map", "python_ThreadPoolExecutor", m, thread_map, 1, warm_up=False)


def q6(repeats):
    def start():
        with ProcessPoolExecutor(2) as ex:
            a = ex.submit(inc, 1)
            b = ex.submit(inc, 2)
            assert a.result() + b.result() == 5

    per_run_ms(
        "q6_pool_start",
        f"python_ProcessPoolExecutor_{multiprocessing.get_start_method()}",
        2,
        start,
        repeats * 2,
    )


def main():
    repeats = 2 if QUICK else 5
    print(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "start_method": multiprocessing.get_start_method(),
                "cpus": os.cpu_count(),
            }
        ),
        flush=True,
    )
    q1(repeats)
    q2_q3_q5(repeats)
    q4(repeats)
    q6(repeats)


if __name__ == "__main__":
    main()
