#!/usr/bin/env python3
"""The MPI bench's questions (benches/mpi.rs) answered by mpi4py.futures.

    mpirun -n 3 --oversubscribe python3 -m mpi4py.futures benches/mpi4py_futures.py
    mpirun -n 2 --oversubscribe python3 benches/mpi4py_futures.py --ping-pong

Under `-m mpi4py.futures`, rank 0 runs this script and ranks 1-2 are
MPIPoolExecutor's pre-started workers; rank 0 measures, each the median of
several rounds on one executor:

* (a) pipelined: submit N tiny tasks, then take every result; ns per task;
* (b) map: `ex.map(inc, range(1M), chunksize=10,000)`; ns per item;
* (c) round trip: one task, its result, the next; µs per round trip;

and prints one JSON line. With `--ping-pong` (plain mpirun, 2 ranks) it
measures mpi4py's own ping-pong between ranks 0 and 1: `comm.send`/`recv`
of a small int (pickled), and `comm.Send`/`Recv` of an 8-byte buffer.

TWINPOOL_BENCH_MPI_TASKS, _ITEMS, _CHUNK, _ROUND_TRIPS, _PINGS and _ROUNDS
change the sizes, as for benches/mpi.rs (defaults 20,000, 1,000,000,
10,000, 2,000, 10,000 and 5).
"""

import json
import os
import statistics
import sys
import time


def env(name, default):
    v = os.environ.get(f"TWINPOOL_BENCH_MPI_{name}")
    return int(v.replace("_", "")) if v else default


def inc(x):
    """The tiny task (module level, so the workers find it)."""
    return x + 1


def pipelined(ex, n):
    t = time.perf_counter()
    futures = [ex.submit(inc, i) for i in range(n)]
    total = sum(f.result() for f in futures)
    s = time.perf_counter() - t
    assert total == n * (n + 1) // 2
    return s


def chunked_map(ex, items, chunk):
    t = time.perf_counter()
    total = sum(ex.map(inc, range(items), chunksize=chunk))
    s = time.perf_counter() - t
    assert total == items * (items + 1) // 2
    return s


def round_trips(ex, n):
    t = time.perf_counter()
    for i in range(n):
        assert ex.submit(inc, i).result() == i + 1
    return time.perf_counter() - t


def futures_main():
    from mpi4py import MPI
    from mpi4py.futures import MPIPoolExecutor

    n, items = env("TASKS", 20_000), env("ITEMS", 1_000_000)
    chunk, trips = env("CHUNK", 10_000), env("ROUND_TRIPS", 2_000)
    rounds = max(1, env("ROUNDS", 5))
    t = time.perf_counter()
    with MPIPoolExecutor() as ex:
        # Waits until the workers are there.
        workers = ex.num_workers
        start_s = time.perf_counter() - t
        pipelined(ex, min(n, 2_000))
        chunked_map(ex, min(items, 100_000), chunk)
        round_trips(ex, 200)
        a, b, c = [], [], []
        for _ in range(rounds):
            a.append(pipelined(ex, n) / n * 1e9)
            b.append(chunked_map(ex, items, chunk))
            c.append(round_trips(ex, trips) / trips * 1e6)
    import mpi4py

    print(
        json.dumps(
            {
                "contender": "mpi4py_futures",
                "mpi4py": mpi4py.__version__,
                "python": sys.version.split()[0],
                "mpi": MPI.Get_library_version().splitlines()[0].strip(),
                "workers": workers,
                "rounds": rounds,
                "start_s": start_s,
                "tasks": n,
                "pipelined_ns_per_task": statistics.median(a),
                "pipelined_runs": a,
                "items": items,
                "chunksize": chunk,
                "map_ns_per_item": statistics.median(b) / items * 1e9,
                "map_s": statistics.median(b),
                "map_runs_s": b,
                "round_trips": trips,
                "round_trip_us": statistics.median(c),
                "round_trip_runs_us": c,
            }
        ),
        flush=True,
    )


def ping_pong_main():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if comm.Get_size() < 2:
        sys.exit("the ping-pong needs 2 ranks: mpirun -n 2 ... --ping-pong")
    n, rounds = env("PINGS", 10_000), max(1, env("ROUNDS", 5))
    if rank > 1:
        return

    def objects(n):
        t = time.perf_counter()
        for i in range(n):
            if rank == 0:
                comm.send(i, dest=1)
                assert comm.recv(source=1) == i + 1
            else:
                comm.send(comm.recv(source=0) + 1, dest=0)
        return time.perf_counter() - t

    buf = bytearray(8)

    def buffers(n):
        t = time.perf_counter()
        for _ in range(n):
            if rank == 0:
                comm.Send(buf, dest=1)
                comm.Recv(buf, source=1)
            else:
                comm.Recv(buf, source=0)
                comm.Send(buf, dest=0)
        return time.perf_counter() - t

    objects(1_000)
    buffers(1_000)
    obj, raw = [], []
    for _ in range(rounds):
        obj.append(objects(n) / n * 1e6)
        raw.append(buffers(n) / n * 1e6)
    if rank == 0:
        print(
            json.dumps(
                {
                    "contender": "mpi4py_ping_pong",
                    "rounds": rounds,
                    "pings": n,
                    "object_ping_pong_us": statistics.median(obj),
                    "object_ping_pong_runs_us": obj,
                    "buffer_ping_pong_us": statistics.median(raw),
                    "buffer_ping_pong_runs_us": raw,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    if "--ping-pong" in sys.argv[1:]:
        ping_pong_main()
    else:
        futures_main()
