#!/usr/bin/env python3
"""Runs the benchmarks of the README's targets and writes benches/RESULTS.md and benches/chart.svg.

    python3 benches/report.py            # everything (about 9.5 minutes on 2 cores)
    python3 benches/report.py --no-run   # only rebuild the report from the
                                         # last criterion results and
                                         # benches/python_peer.jsonl
    python3 benches/report.py --no-readme  # leave README.md alone
    python3 benches/report.py --only mpi # only the MPI part (about 2 minutes):
                                         # prints its rows, writes
                                         # benches/mpi.jsonl, leaves RESULTS.md
                                         # and README.md alone (with --no-run:
                                         # only prints them from mpi.jsonl)

It runs `cargo bench -p twinpool-benches --bench thread_pool --bench process_pool -- --save-baseline
issue5-report` (criterion; estimates read from
target/criterion/<group>/<bench>/issue5-report/), then
benches/python_peer.py (its JSON lines are kept in benches/python_peer.jsonl),
and writes a table of ratios twinpool / peer with the absolute numbers. If
README.md holds the markers <!-- bench:start --> and <!-- bench:end -->, the
text between them is replaced by a summary. Standard library only.

When `mpirun` is on the PATH and mpi4py imports, it also runs the MPI back
end's bench (benches/mpi.rs, built with `--features mpi`) against
mpi4py.futures (benches/mpi4py_futures.py) and raw MPI, in fresh `mpirun`
jobs taking turns (results kept in benches/mpi.jsonl); without them its
rows say they were not measured.
"""

import datetime
import html
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
PEER_JSONL = BENCHES / "python_peer.jsonl"
COMMAND = "python3 benches/report.py"
# criterion saves this run under its own baseline name, so that another
# `cargo bench` on the same target directory cannot mix into the report.
BASELINE = "issue5-report"

# Per group: the unit its table uses, and what one criterion iteration holds
# is read from the throughput criterion recorded.
GROUPS = {
    "q1_thread_submit_result": "1. Thread back end, submit all then result all (2 workers, trivial task)",
    "q1_thread_one_at_a_time": "1b. Thread back end, one submit + result at a time (2 workers)",
    "q2_process_pipelined": "2. Process back end, pipelined trivial named tasks (1 worker)",
    "q3_process_round_trip": "3. Process round trip, one task at a time (1 worker)",
    "q4_chunked_map": "4. Chunked map of 1M items, chunksize 1000 (2 workers)",
    "q5_transfer_64mib": "5. 64 MiB Vec<u8> to a worker, its length back",
    "q6_pool_start": "6. Pool start: 2 workers, 2 tasks, shutdown (fresh process)",
    "q6_pool_start_256mib_heap": "6b. The same while the parent holds 256 MiB of touched heap",
    "q7_thread_outstanding_10k": "7a. Thread back end, 10k tasks outstanding (submit all, then result all; 2 workers)",
    "q7_thread_outstanding_100k": "7b. Thread back end, 100k tasks outstanding",
    "q7_thread_outstanding_1m": "7c. Thread back end, 1M tasks outstanding",
    "q7_thread_outstanding_4m": "7d. Thread back end, 4M tasks outstanding",
    "q8_thread_submitters_1": "8a. Thread back end, 1 submitting thread (fresh each run) x 1M tasks",
    "q8_thread_submitters_4": "8b. Thread back end, 4 submitting threads x 250k tasks",
    "q8_thread_submitters_16": "8c. Thread back end, 16 submitting threads x 62.5k tasks",
    "q9_thread_one_at_a_time_busy": "9. One submit + result at a time while another pool's threads (one per CPU) run 50 µs tasks with short waits between",
    "q10_thread_peak_memory": "10. Peak resident memory per outstanding task, 1M u64 tasks (VmHWM of a child per contender, median of 3)",
}
# Q11: a Vec<u8> of each size to a worker, its length back, one at a time.
PAYLOADS = [("1kib", "1 KiB"), ("16kib", "16 KiB"), ("64kib", "64 KiB"), ("256kib", "256 KiB"),
            ("1mib", "1 MiB"), ("16mib", "16 MiB"), ("256mib", "256 MiB"), ("1gib", "1 GiB")]
for i, (label, size) in enumerate(PAYLOADS):
    GROUPS[f"q11_payload_{label}"] = f"11{'abcdefgh'[i]}. {size} Vec<u8> to a worker, its length back (1 worker)"
SHARED_GROUP = "q12_shared_256mib"
GROUPS[SHARED_GROUP] = "12. 100 tasks on 2 workers each read the same 256 MiB: one Shared, or the bytes sent with every task (median of 3 rounds, fresh pools)"
QUEUED_GROUP = "q13_process_queued_memory"
GROUPS[QUEUED_GROUP] = "13. Parent memory per queued small process task, 1M queued behind a busy worker, futures included (VmHWM of a child, median of 3)"

# Groups whose numbers are bytes per task (read from memory.json), not times.
MEMORY_GROUPS = {"q10_thread_peak_memory", "q13_process_queued_memory"}
# Groups the thread bench measures itself, contenders taking turns (read
# from latency.json: ns per task).
LATENCY_GROUPS = {"q9_thread_one_at_a_time_busy"}
# The thread groups of the sizes the README's first target does not cover.
SIZE_GROUPS = [
    ("q7_thread_outstanding_10k", "10k tasks outstanding"),
    ("q7_thread_outstanding_100k", "100k tasks outstanding"),
    ("q7_thread_outstanding_1m", "1M tasks outstanding"),
    ("q7_thread_outstanding_4m", "4M tasks outstanding"),
    ("q8_thread_submitters_1", "1 submitting thread"),
    ("q8_thread_submitters_4", "4 submitting threads"),
    ("q8_thread_submitters_16", "16 submitting threads"),
]
THREAD_PEERS = ["raw_crossbeam", "threadpool", "rayon_spawn"]

# (group, twinpool bench, peers it is compared with)
COMPARISONS = [
    ("q1_thread_submit_result", "twinpool", ["raw_crossbeam", "threadpool", "rayon_spawn", "python_ThreadPoolExecutor"]),
    ("q1_thread_one_at_a_time", "twinpool", ["raw_crossbeam", "threadpool", "rayon_spawn", "python_ThreadPoolExecutor"]),
    ("q2_process_pipelined", "twinpool", ["raw_ipc_channel", "procspawn", "python_ProcessPoolExecutor"]),
    ("q3_process_round_trip", "twinpool", ["raw_ipc_channel", "raw_pipe", "procspawn", "python_ProcessPoolExecutor"]),
    ("q4_chunked_map", "twinpool_processes", ["procspawn_chunks", "python_ProcessPoolExecutor"]),
    ("q4_chunked_map", "twinpool_threads", ["rayon_par_iter", "python_ThreadPoolExecutor"]),
    ("q5_transfer_64mib", "twinpool", ["memcpy", "raw_ipc_channel", "procspawn", "python_ProcessPoolExecutor"]),
    ("q6_pool_start", "twinpool", ["raw_spawn_pipe", "raw_spawn_pipe_fork", "procspawn", "python_ProcessPoolExecutor_fork"]),
    ("q6_pool_start_256mib_heap", "twinpool", ["raw_spawn_pipe", "raw_spawn_pipe_fork", "procspawn"]),
] + [(g, "twinpool", THREAD_PEERS) for g, _ in SIZE_GROUPS] + [
    ("q9_thread_one_at_a_time_busy", "twinpool", THREAD_PEERS),
    ("q10_thread_peak_memory", "twinpool", THREAD_PEERS),
] + [(f"q11_payload_{label}", "twinpool", ["raw_ipc_channel"]) for label, _ in PAYLOADS] + [
    (SHARED_GROUP, "twinpool_shared", ["twinpool_send_each"]),
]


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout.strip()


def target_dir():
    meta = json.loads(sh("cargo", "metadata", "--format-version", "1", "--no-deps", cwd=ROOT))
    return Path(meta["target_directory"])


def loadavg():
    try:
        return Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return ["?"] * 3


# A benchmark that hangs (a deadlock in the pool) must not hang the report.
BENCH_TIMEOUT_S = 20 * 60


def run_bounded(cmd):
    """Runs cmd in its own process group; kills that group if it takes more
    than BENCH_TIMEOUT_S (a hung bench and its worker processes with it)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    try:
        code = proc.wait(timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        sys.exit(f"report.py: {' '.join(cmd[:4])} ... did not finish in {BENCH_TIMEOUT_S} s (a hang?); killed it")
    if code != 0:
        sys.exit(f"report.py: {' '.join(cmd[:4])} ... failed with exit code {code}")


def run_benches(criterion_dir):
    # Stale results of a removed benchmark must not reach the table.
    for d in criterion_dir.glob(f"*/*/{BASELINE}"):
        for p in sorted(d.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        d.rmdir()
    for group in MEMORY_GROUPS | LATENCY_GROUPS:
        for p in list(criterion_dir.glob(f"{group}/*/memory.json")) + list(criterion_dir.glob(f"{group}/*/latency.json")):
            p.unlink()
    run_bounded(
        ["cargo", "bench", "-p", "twinpool-benches", "--bench", "thread_pool", "--bench", "process_pool", "--", "--save-baseline", BASELINE]
    )
    # Not criterion's: it prints one JSON line per contender.
    shared = subprocess.run(
        ["cargo", "bench", "-p", "twinpool-benches", "--bench", "shared"], cwd=ROOT, check=True, text=True, stdout=subprocess.PIPE, timeout=BENCH_TIMEOUT_S
    ).stdout
    criterion_dir.mkdir(parents=True, exist_ok=True)
    (criterion_dir / SHARED_JSONL).write_text("".join(l + "\n" for l in shared.splitlines() if l.startswith("{")))
    out = subprocess.run(
        [sys.executable, str(BENCHES / "python_peer.py")],
        cwd=ROOT,
        check=True,
        text=True,
        stdout=subprocess.PIPE,
    ).stdout
    PEER_JSONL.write_text(out)


class Result:
    """One measured benchmark, with its time per unit of work in ns."""

    def __init__(self, group, name, ns_per_iter, lo, hi, elements=None, nbytes=None, source="criterion", note="", memory=False):
        self.group, self.name = group, name
        self.ns_per_iter, self.lo, self.hi = ns_per_iter, lo, hi
        self.elements, self.nbytes = elements, nbytes
        self.source, self.note = source, note
        # For memory groups ns_per_iter holds bytes per task, elements the
        # tasks outstanding.
        self.memory = memory

    def cost(self):
        """What ratios are taken of: ns per element, or ns per iteration (bytes per task for memory)."""
        if self.memory:
            return self.ns_per_iter
        return self.ns_per_iter / self.elements if self.elements else self.ns_per_iter

    def shown(self):
        """(value, unit) in the group's unit."""
        if self.memory:
            return self.ns_per_iter, "B/task"
        if self.nbytes:
            return self.nbytes / (self.ns_per_iter / 1e9) / (1 << 20), "MiB/s"
        if self.elements:
            return self.ns_per_iter / self.elements, "ns/item" if self.group == "q4_chunked_map" else "ns/task"
        return self.ns_per_iter / 1e6, "ms"

    def per_run(self):
        """The absolute time of one run, with what it held."""
        if self.memory:
            return f"{self.elements:,} tasks outstanding"
        ms = self.ns_per_iter / 1e6
        if self.nbytes:
            return f"{fmt(ms)} ms per {size_text(self.nbytes)}"
        if self.elements:
            what = "items" if self.group == "q4_chunked_map" else "tasks"
            return f"{fmt(ms)} ms per {self.elements:,} {what}"
        return f"{fmt(ms)} ms per run"


def size_text(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} B"


def fmt(x):
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def read_memory(gdir, group):
    """The memory.json files the thread bench writes for a memory group."""
    out = {}
    for p in sorted(gdir.glob("*/memory.json")):
        rec = json.loads(p.read_text())
        runs = rec["runs_bytes_per_task"]
        name = p.parent.name
        out[(group, name)] = Result(
            group,
            name,
            rec["median"]["bytes_per_task"],
            min(runs),
            max(runs),
            elements=rec["median"]["tasks"],
            source=f"median of {len(runs)} child processes",
            memory=True,
        )
    return out


def read_criterion(criterion_dir):
    out = {}
    for group in GROUPS:
        gdir = criterion_dir / group
        if not gdir.is_dir():
            continue
        if group in MEMORY_GROUPS:
            out.update(read_memory(gdir, group))
            continue
        if group in LATENCY_GROUPS:
            for p in sorted(gdir.glob("*/latency.json")):
                rec = json.loads(p.read_text())
                n = rec["tasks"]
                out[(group, p.parent.name)] = Result(
                    group,
                    p.parent.name,
                    rec["ns_per_task"] * n,
                    rec["lo"] * n,
                    rec["hi"] * n,
                    elements=n,
                    source=f"mean of {rec['batches']} interleaved batches",
                )
            continue
        for bdir in sorted(gdir.iterdir()):
            est, bench = bdir / BASELINE / "estimates.json", bdir / BASELINE / "benchmark.json"
            if not est.exists() or not bench.exists():
                continue
            e, b = json.loads(est.read_text()), json.loads(bench.read_text())
            mean = e["mean"]
            tp = b.get("throughput") or {}
            out[(group, b["function_id"])] = Result(
                group,
                b["function_id"],
                mean["point_estimate"],
                mean["confidence_interval"]["lower_bound"],
                mean["confidence_interval"]["upper_bound"],
                elements=tp.get("Elements"),
                nbytes=tp.get("Bytes") or tp.get("BytesDecimal"),
            )
    return out


# Where the run keeps the Shared bench's lines (in criterion's directory).
SHARED_JSONL = "q12_shared.jsonl"


def read_shared(criterion_dir):
    out = {}
    p = criterion_dir / SHARED_JSONL
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        rec = json.loads(line)
        secs = rec["seconds"]
        out[(rec["group"], rec["name"])] = Result(
            rec["group"],
            rec["name"],
            rec["median_s"] * 1e9,
            min(secs) * 1e9,
            max(secs) * 1e9,
            elements=rec["tasks"],
            source=f"median of {len(secs)} rounds",
        )
    return out


def read_python():
    out, meta = {}, {}
    if not PEER_JSONL.exists():
        return out, meta
    for line in PEER_JSONL.read_text().splitlines():
        rec = json.loads(line)
        if "group" not in rec:
            meta = rec
            continue
        runs, n, unit = rec["runs"], rec["n"], rec["unit"]
        if unit in ("ns/task", "ns/item"):
            ns = [r * n for r in runs]
            res = dict(elements=n)
        elif unit == "MiB/s":
            ns = [n / (1 << 20) / r * 1e9 for r in runs]
            res = dict(nbytes=n)
        else:  # ms per run
            ns = [r * 1e6 for r in runs]
            res = {}
        out[(rec["group"], rec["peer"])] = Result(
            rec["group"],
            rec["peer"],
            sum(ns) / len(ns),
            min(ns),
            max(ns),
            source=f"Python, mean of {len(runs)} run(s)",
            **res,
        )
    return out, meta


def machine():
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    base = {"nproc": sh("nproc"), "cpu": cpu, "rustc": sh("rustc", "--version"), "kernel": sh("uname", "-r")}
    try:
        # A run from an exported tree (git archive) has no repository: its
        # commit can be named in TWINPOOL_BENCH_COMMIT.
        if os.environ.get("TWINPOOL_BENCH_COMMIT"):
            return dict(base, commit=os.environ["TWINPOOL_BENCH_COMMIT"] + " (exported tree)")
        commit = sh("git", "rev-parse", "--short", "HEAD", cwd=ROOT)
        dirty = sh("git", "status", "--porcelain", "--", "src", "Cargo.toml", cwd=ROOT)
        if dirty:
            commit += " with uncommitted changes in src/ or Cargo.toml"
    except (subprocess.CalledProcessError, OSError):
        commit = "?"
    return dict(base, commit=commit)


def targets(res):
    """(description, measured text, met?) for each of the README's targets."""

    def get(g, n):
        return res.get((g, n))

    rows = []

    def ratio_row(desc, g, a, b, limit, faster=False):
        ra, rb = get(g, a), get(g, b)
        if not ra or not rb:
            rows.append((desc, "not measured", None))
            return
        r = ra.cost() / rb.cost()
        if faster:  # b / a must be at least `limit`
            x = 1 / r
            rows.append((desc, f"{fmt(x)}x faster ({fmt(ra.cost())} vs {fmt(rb.cost())} {ra.shown()[1]})", x >= limit))
        else:
            rows.append((desc, f"{fmt(r)}x ({fmt(ra.cost())} vs {fmt(rb.cost())} {ra.shown()[1]})", r <= limit))

    ratio_row("Thread submit+result at most 1.5x the raw crossbeam limit", "q1_thread_submit_result", "twinpool", "raw_crossbeam", 1.5)
    ratio_row("Thread submit+result at least 20x faster than ThreadPoolExecutor", "q1_thread_submit_result", "twinpool", "python_ThreadPoolExecutor", 20, faster=True)
    ratio_row("Process pipelined at most 2x raw ipc-channel pipelined", "q2_process_pipelined", "twinpool", "raw_ipc_channel", 2)
    ratio_row("Process round trip at most 1.3x raw ipc-channel ping-pong", "q3_process_round_trip", "twinpool", "raw_ipc_channel", 1.3)
    ratio_row("Chunked process map at least 5x faster than ProcessPoolExecutor.map(chunksize=1000)", "q4_chunked_map", "twinpool_processes", "python_ProcessPoolExecutor", 5, faster=True)
    t = get("q5_transfer_64mib", "twinpool")
    if t:
        v = t.shown()[0]
        rows.append(("64 MiB Vec<u8> to a worker at least 1000 MiB/s", f"{fmt(v)} MiB/s", v >= 1000))
    else:
        rows.append(("64 MiB Vec<u8> to a worker at least 1000 MiB/s", "not measured", None))
    t = get("q6_pool_start", "twinpool")
    if t:
        v = t.shown()[0]
        rows.append(("Pool start, 2 workers + 2 tasks + shutdown, under 5 ms", f"{fmt(v)} ms", v < 5))
    else:
        rows.append(("Pool start, 2 workers + 2 tasks + shutdown, under 5 ms", "not measured", None))

    # The thread back end at every size: at most 1.2x the raw pool (the
    # goal, at or below it and below threadpool and rayon, is shown too).
    def peers_text(g, t):
        out = []
        for p in ("threadpool", "rayon_spawn"):
            r = get(g, p)
            if r:
                out.append(f"{fmt(t.cost() / r.cost())}x {p}")
        return "; " + ", ".join(out) if out else ""

    for g, what in SIZE_GROUPS:
        desc = f"Thread submit+result, {what}, at most 1.2x raw crossbeam"
        t, raw = get(g, "twinpool"), get(g, "raw_crossbeam")
        if not t or not raw:
            rows.append((desc, "not measured", None))
            continue
        r = t.cost() / raw.cost()
        rows.append((desc, f"{fmt(r)}x ({fmt(t.cost())} vs {fmt(raw.cost())} ns/task{peers_text(g, t)})", r <= 1.2))
    g = "q9_thread_one_at_a_time_busy"
    desc = "One task at a time while another pool's threads are busy: mean at most raw crossbeam's"
    t, raw = get(g, "twinpool"), get(g, "raw_crossbeam")
    if t and raw:
        r = t.cost() / raw.cost()
        rows.append((desc, f"{fmt(r)}x ({fmt(t.cost())} vs {fmt(raw.cost())} ns/task{peers_text(g, t)})", r <= 1.0))
    else:
        rows.append((desc, "not measured", None))
    g = "q10_thread_peak_memory"
    desc = "Peak memory per outstanding thread task (u64 result) at most 96 B"
    t = get(g, "twinpool")
    if t:
        others = ", ".join(f"{p} {fmt(get(g, p).cost())}" for p in THREAD_PEERS if get(g, p))
        rows.append((desc, f"{fmt(t.cost())} B/task" + (f" ({others})" if others else ""), t.cost() <= 96))
    else:
        rows.append((desc, "not measured", None))

    # Payloads of every size: at least 0.8x raw ipc-channel bytes, at least
    # 1x from 1 MiB up, and no cliff: twinpool's share of the raw speed
    # changes by at most 2x from one size to the next.
    shares = []
    for i, (label, size) in enumerate(PAYLOADS):
        g = f"q11_payload_{label}"
        need = 1.0 if i >= 4 else 0.8
        desc = f"{size} Vec<u8> to a worker at least {need:g}x raw ipc-channel bytes"
        t, raw = get(g, "twinpool"), get(g, "raw_ipc_channel")
        if not t or not raw:
            rows.append((desc, "not measured", None))
            shares.append(None)
            continue
        share = raw.cost() / t.cost()
        shares.append((size, share))
        rows.append((desc, f"{fmt(share)}x ({fmt(t.shown()[0])} vs {fmt(raw.shown()[0])} MiB/s)", share >= need))
    pairs = [(a, b) for a, b in zip(shares, shares[1:]) if a and b]
    desc = "No cliff: from one payload size to the next, twinpool's share of raw speed changes at most 2x"
    if pairs:
        (sa, a), (sb, b) = max(pairs, key=lambda p: max(p[0][1] / p[1][1], p[1][1] / p[0][1]))
        worst = max(a / b, b / a)
        rows.append((desc, f"largest change {fmt(worst)}x ({sa} {fmt(a)}x → {sb} {fmt(b)}x)", worst <= 2))
    else:
        rows.append((desc, "not measured", None))

    desc = "100 tasks reading one 256 MiB input: a Shared faster than sending it with each task"
    t, each = get(SHARED_GROUP, "twinpool_shared"), get(SHARED_GROUP, "twinpool_send_each")
    if t and each:
        rows.append((desc, f"{fmt(each.cost() / t.cost())}x faster ({fmt(t.ns_per_iter / 1e9)} vs {fmt(each.ns_per_iter / 1e9)} s)", t.cost() < each.cost()))
    else:
        rows.append((desc, "not measured", None))

    desc = "Parent memory per queued small process task at most 128 B"
    t = get(QUEUED_GROUP, "twinpool")
    if t:
        rows.append((desc, f"{fmt(t.cost())} B/task (Python's ProcessPoolExecutor: about 2,000, not measured here)", t.cost() <= 128))
    else:
        rows.append((desc, "not measured", None))
    return rows


def verdict(ok):
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def ratio_rows(res):
    """(group, twinpool Result, peer Result, ratio) for each comparison."""
    out = []
    for group, tp, peers in COMPARISONS:
        t = res.get((group, tp))
        if not t:
            continue
        for p in peers:
            r = res.get((group, p))
            if r:
                out.append((group, t, r, t.cost() / r.cost()))
    return out


def table_md(res):
    lines = []
    for group, title in GROUPS.items():
        rows = [r for (g, _), r in res.items() if g == group]
        if not rows:
            continue
        tps = [r for r in rows if r.name.startswith("twinpool")]
        lines += [f"### {title}", ""]
        lines += ["| bench | measured | per run | 95% CI / range of the mean's unit | twinpool ÷ this |", "|---|---|---|---|---|"]
        # twinpool first, then peers in comparison order
        order = []
        for g, tp, peers in COMPARISONS:
            if g == group:
                order += [tp] + [p for p in peers if p not in order]
        order += sorted(r.name for r in rows if r.name not in order)
        seen = set()
        for name in order:
            r = res.get((group, name))
            if not r or name in seen:
                continue
            seen.add(name)
            v, unit = r.shown()
            lo = Result(group, name, r.lo, 0, 0, r.elements, r.nbytes, memory=r.memory).shown()[0]
            hi = Result(group, name, r.hi, 0, 0, r.elements, r.nbytes, memory=r.memory).shown()[0]
            lo, hi = min(lo, hi), max(lo, hi)
            if r.name.startswith("twinpool"):
                rel = "—"
            else:
                mine = [tp for g, tp, peers in COMPARISONS if g == group and name in peers]
                rels = []
                for tname in mine:
                    t = res.get((group, tname))
                    if t:
                        rels.append(f"{fmt(t.cost() / r.cost())}x" + (f" ({tname})" if len(tps) > 1 else ""))
                rel = ", ".join(rels) or "—"
            src = "" if r.source == "criterion" or r.memory or group in LATENCY_GROUPS else f" ({r.source})"
            lines.append(f"| {name}{src} | **{fmt(v)} {unit}** | {r.per_run()} | {fmt(lo)} – {fmt(hi)} | {rel} |")
        lines.append("")
    return lines


def chart_svg(rows):
    """A horizontal bar chart of twinpool ÷ peer on a log scale (1 = parity)."""
    import math

    bar_h, gap, left, width, top = 18, 6, 430, 420, 40
    lo_e, hi_e = -3, 3  # 10^-3 .. 10^3
    for _, _, _, r in rows:
        e = math.log10(r)
        lo_e, hi_e = min(lo_e, math.floor(e)), max(hi_e, math.ceil(e))
    h = top + len(rows) * (bar_h + gap) + 50
    total_w = left + width + 90

    def x(v):
        return left + (math.log10(v) - lo_e) / (hi_e - lo_e) * width

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{h}" font-family="sans-serif" font-size="12">',
        f'<rect width="{total_w}" height="{h}" fill="white"/>',
        f'<text x="10" y="20" font-size="14" font-weight="bold">twinpool time ÷ peer time (log scale; left of 1 = twinpool faster)</text>',
    ]
    for e in range(lo_e, hi_e + 1):
        xx = x(10**e)
        out.append(f'<line x1="{xx:.1f}" y1="{top - 5}" x2="{xx:.1f}" y2="{h - 40}" stroke="{"#333" if e == 0 else "#ddd"}"/>')
        out.append(f'<text x="{xx:.1f}" y="{h - 25}" text-anchor="middle">{10.0**e:g}</text>')
    for i, (group, t, p, r) in enumerate(rows):
        y = top + i * (bar_h + gap)
        x0, x1 = x(1), x(r)
        color = "#2a9d4b" if r <= 1 else "#d1495b"
        label = f"{GROUPS[group].split('.', 1)[0]}. {t.name} vs {p.name}"
        out.append(f'<text x="{left - 6}" y="{y + bar_h - 5}" text-anchor="end">{html.escape(label)}</text>')
        out.append(f'<rect x="{min(x0, x1):.1f}" y="{y}" width="{max(abs(x1 - x0), 1):.1f}" height="{bar_h}" fill="{color}"/>')
        tx = max(x0, x1) + 4
        out.append(f'<text x="{tx:.1f}" y="{y + bar_h - 5}">{fmt(r)}x</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ─── The MPI back end against mpi4py.futures and raw MPI ─────────────────
#
# Run in the full report when `mpirun` exists and mpi4py imports (else its
# rows say why they are not measured); `python3 benches/report.py --only
# mpi` runs just this part (about 2 minutes on 2 cores), prints its rows and
# table and leaves RESULTS.md and README.md alone. Each job is a fresh
# `mpirun`; the four jobs take turns (the order rotates every round), and a
# measure's number is the median over the jobs of each job's median.

MPI_JSONL = BENCHES / "mpi.jsonl"
MPI_COMMAND = "python3 benches/report.py --only mpi"
# Fresh jobs per contender, and rounds inside each job (the bench's
# TWINPOOL_BENCH_MPI_ROUNDS, unless set already).
MPI_JOBS = 3
MPI_INNER_ROUNDS = "3"
MPI_TIMEOUT_S = 150
MPI_SCRIPT = BENCHES / "mpi4py_futures.py"
# The measures of the futures jobs: (key, what, unit).
MPI_MEASURES = [
    ("pipelined_ns_per_task", "(a) pipelined: submit 20,000 tiny tasks, then every result", "ns/task"),
    ("map_ns_per_item", "(b) chunked map of 1M items, chunksize 10,000", "ns/item"),
    ("map_s", "(b) the same map, whole", "s"),
    ("round_trip_us", "(c) one task at a time: submit, result, repeat (2,000 round trips)", "µs"),
]


def mpi_missing():
    """Why the MPI part cannot run here, or None."""
    if not shutil.which("mpirun"):
        return "no mpirun on the PATH"
    try:
        subprocess.run([sys.executable, "-c", "import mpi4py"], check=True, capture_output=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return f"{sys.executable} cannot import mpi4py (pip install mpi4py)"
    return None


def mpi_env():
    env = dict(os.environ)
    if os.geteuid() == 0:  # Open MPI refuses root without these
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.setdefault("TWINPOOL_BENCH_MPI_ROUNDS", MPI_INNER_ROUNDS)
    return env


def build_mpi_bench():
    """Builds benches/mpi.rs; the path of its executable."""
    out = subprocess.run(
        ["cargo", "bench", "-p", "twinpool-benches", "--features", "mpi", "--bench", "mpi", "--no-run", "--message-format=json-render-diagnostics"],
        cwd=ROOT,
        check=True,
        text=True,
        stdout=subprocess.PIPE,
    ).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "mpi" and msg.get("executable"):
            return msg["executable"]
    sys.exit("report.py: cargo built no executable for the mpi bench")


def run_mpi_job(cmd, env):
    """Runs one mpirun job in its own process group (killed whole if it
    hangs); the JSON line rank 0 printed."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=MPI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        sys.exit(f"report.py: {' '.join(cmd)} did not finish in {MPI_TIMEOUT_S} s (a hang?); killed it")
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"report.py: {' '.join(cmd)} failed (exit code {proc.returncode}):\n{err[-3000:]}")
    return json.loads(lines[-1])


def run_mpi(m):
    exe = build_mpi_bench()
    env = mpi_env()
    base = ["mpirun", "--oversubscribe"]
    jobs = [
        ("twinpool", base + ["-n", "3", exe]),
        ("mpi4py_futures", base + ["-n", "3", sys.executable, "-m", "mpi4py.futures", str(MPI_SCRIPT)]),
        ("raw_mpi", base + ["-n", "2", exe, "--raw-ping-pong"]),
        ("mpi4py_ping_pong", base + ["-n", "2", sys.executable, str(MPI_SCRIPT), "--ping-pong"]),
    ]
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = loadavg()
    recs = []
    for r in range(MPI_JOBS):
        for name, cmd in jobs[r % len(jobs):] + jobs[: r % len(jobs)]:
            t = time.monotonic()
            rec = run_mpi_job(cmd, env)
            rec["job"] = r
            recs.append(rec)
            print(f"report.py: mpi job {r + 1}/{MPI_JOBS} {name}: {time.monotonic() - t:.1f} s", file=sys.stderr)
    mpirun = subprocess.run(["mpirun", "--version"], env=env, text=True, capture_output=True).stdout.splitlines()
    meta = {
        "meta": True,
        "date": f"{started:%Y-%m-%d %H:%M} UTC",
        "commit": m["commit"],
        "nproc": m["nproc"],
        "cpu": m["cpu"],
        "rustc": m["rustc"],
        "mpirun": mpirun[0] if mpirun else "?",
        "jobs": MPI_JOBS,
        "inner_rounds": env["TWINPOOL_BENCH_MPI_ROUNDS"],
        "load_before": load_before,
        "load_after": loadavg(),
        "commands": {name: " ".join(cmd) for name, cmd in jobs},
    }
    MPI_JSONL.write_text("".join(json.dumps(r) + "\n" for r in [meta] + recs))


def read_mpi():
    """(meta, {contender: {measure: (median over jobs, [each job's median])}})."""
    if not MPI_JSONL.exists():
        return None, {}
    meta, out = {}, {}
    for line in MPI_JSONL.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("meta"):
            meta = rec
            continue
        c = out.setdefault(rec["contender"], {})
        for k, v in rec.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "job":
                c.setdefault(k, []).append(v)
    for c in out.values():
        for k, vs in c.items():
            c[k] = (statistics.median(vs), vs)
    return meta, out


def mpi_targets(mpi, why_not=None):
    """The MPI rows of the targets table."""
    rows = []
    tp, py = mpi.get("twinpool", {}), mpi.get("mpi4py_futures", {})
    raw = mpi.get("raw_mpi", {})

    def row(desc, have, text, ok):
        if not have:
            rows.append((desc, f"not measured ({why_not})" if why_not else "not measured", None))
        else:
            rows.append((desc, text(), ok()))

    def get(c, k):
        return c[k][0]

    desc = "MPI pipelined tiny tasks at least 10x faster per task than MPIPoolExecutor"
    have = "pipelined_ns_per_task" in tp and "pipelined_ns_per_task" in py
    row(
        desc,
        have,
        lambda: f"{fmt(get(py, 'pipelined_ns_per_task') / get(tp, 'pipelined_ns_per_task'))}x faster"
        f" ({fmt(get(tp, 'pipelined_ns_per_task') / 1e3)} vs {fmt(get(py, 'pipelined_ns_per_task') / 1e3)} µs/task)",
        lambda: get(py, "pipelined_ns_per_task") / get(tp, "pipelined_ns_per_task") >= 10,
    )
    desc = "MPI round trip at most 2x a raw MPI ping-pong (8 bytes)"
    have = "round_trip_us" in tp and "ping_pong_us" in raw
    row(
        desc,
        have,
        lambda: f"{fmt(get(tp, 'round_trip_us') / get(raw, 'ping_pong_us'))}x"
        f" ({fmt(get(tp, 'round_trip_us'))} vs {fmt(get(raw, 'ping_pong_us'))} µs; MPIPoolExecutor {fmt(get(py, 'round_trip_us')) if 'round_trip_us' in py else '?'} µs)",
        lambda: get(tp, "round_trip_us") / get(raw, "ping_pong_us") <= 2,
    )
    desc = "MPI chunked map (1M items, chunksize 10,000) at least 5x faster than MPIPoolExecutor.map"
    have = "map_s" in tp and "map_s" in py
    row(
        desc,
        have,
        lambda: f"{fmt(get(py, 'map_s') / get(tp, 'map_s'))}x faster"
        f" ({fmt(get(tp, 'map_ns_per_item'))} vs {fmt(get(py, 'map_ns_per_item'))} ns/item)",
        lambda: get(py, "map_s") / get(tp, "map_s") >= 5,
    )
    return rows


def mpi_table_md(meta, mpi):
    """The MPI section of RESULTS.md (and of `--only mpi`'s output)."""
    if not mpi:
        return []
    tp, py = mpi.get("twinpool", {}), mpi.get("mpi4py_futures", {})
    raw, pp = mpi.get("raw_mpi", {}), mpi.get("mpi4py_ping_pong", {})

    def cell(c, k, scale=1.0):
        if k not in c:
            return "—", "—"
        v, vs = c[k]
        return f"**{fmt(v * scale)}**", f"{fmt(min(vs) * scale)} – {fmt(max(vs) * scale)}"

    lines = [
        "### MPI back end: `mpirun -n 3 --oversubscribe`, rank 0 the pool, 2 serving ranks",
        "",
        f"Measured {meta.get('date', '?')} at commit {meta.get('commit', '?')}, {meta.get('mpirun', '?')}, {meta.get('nproc', '?')} CPUs;"
        f" {meta.get('jobs', '?')} fresh jobs per contender taking turns, {meta.get('inner_rounds', '?')} rounds in each;"
        f" the median over the jobs of each job's median (range: the jobs' medians);"
        f" load average before / after: {' '.join(meta.get('load_before', ['?']))} / {' '.join(meta.get('load_after', ['?']))}."
        f" Reproduce: `{MPI_COMMAND}`.",
        "",
        "| measure | twinpool (`workers_per_rank(1)`: 2 worker processes) | range | mpi4py.futures `MPIPoolExecutor` (2 worker ranks) | range | twinpool ÷ mpi4py |",
        "|---|---|---|---|---|---|",
    ]
    for k, what, unit in MPI_MEASURES:
        scale = 1e-3 if unit == "ns/task" else 1.0
        shown = "µs/task" if unit == "ns/task" else unit
        a, ar = cell(tp, k, scale)
        b, br = cell(py, k, scale)
        rel = f"{fmt(tp[k][0] / py[k][0])}x" if k in tp and k in py else "—"
        lines.append(f"| {what}, {shown} | {a} | {ar} | {b} | {br} | {rel} |")
    lines += [
        "",
        "| the floor for (c), µs per round trip | median | range |",
        "|---|---|---|",
    ]
    for c, k, what in [
        (raw, "ping_pong_us", "(d) raw MPI ping-pong rank 0 ↔ 1, 8 bytes, blocking `MPI_Send`/`MPI_Recv` (rsmpi)"),
        (raw, "polled_ping_pong_us", "the same, received by `MPI_Iprobe` with twinpool's back-off while messages flow (bursts of 24 probes, 10 yields, then sleeps of 4 µs doubling to 50 µs)"),
        (pp, "buffer_ping_pong_us", "mpi4py `comm.Send`/`Recv` of an 8-byte buffer"),
        (pp, "object_ping_pong_us", "mpi4py `comm.send`/`recv` of a small int (pickled)"),
        (tp, "local_round_trip_us", "twinpool, one task at a time on a local 1-worker process pool in rank 0 (the ipc-channel leg, no MPI)"),
    ]:
        v, r = cell(c, k)
        lines.append(f"| {what} | {v} | {r} |")
    lines.append("")
    return lines


def mpi_part(m, no_run):
    """Runs the MPI part unless `no_run`; (meta, results, why not measured)."""
    why = mpi_missing()
    if not no_run:
        if why:
            print(f"report.py: the MPI rows are skipped: {why}", file=sys.stderr)
            return None, {}, why
        run_mpi(m)
    meta, mpi = read_mpi()
    if not mpi:
        return None, {}, why or f"no {MPI_JSONL.name}: run `{MPI_COMMAND}`"
    return meta, mpi, None


def main_only_mpi(no_run):
    meta, mpi, why = mpi_part(machine(), no_run)
    rows = mpi_targets(mpi, why)
    print("| target | measured | verdict |\n|---|---|---|")
    for d, v, ok in rows:
        print(f"| {d} | {v} | {verdict(ok)} |")
    print()
    print("\n".join(mpi_table_md(meta or {}, mpi)))
    print(f"report.py: MPI results in {MPI_JSONL} (RESULTS.md and README.md left alone)", file=sys.stderr)


def only():
    """The part `--only PART` asks for (only `mpi` is one), or None."""
    args = sys.argv[1:]
    for i, a in enumerate(args):
        part = a.split("=", 1)[1] if a.startswith("--only=") else (args[i + 1] if a == "--only" and i + 1 < len(args) else None)
        if a == "--only" and part is None:
            sys.exit("report.py: --only needs a part: mpi")
        if part is not None:
            if part != "mpi":
                sys.exit(f"report.py: --only {part}: the only part is mpi")
            return part
    return None


def main():
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        return
    no_run = "--no-run" in sys.argv[1:]
    if only() == "mpi":
        main_only_mpi(no_run)
        return
    criterion_dir = target_dir() / "criterion"
    load_before = loadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    m = machine()  # before the build: the commit that is measured
    if not no_run:
        run_benches(criterion_dir)
    load_after = loadavg()
    mpi_meta, mpi, mpi_why = mpi_part(m, no_run)
    res = read_criterion(criterion_dir)
    res.update(read_shared(criterion_dir))
    py, py_meta = read_python()
    res.update(py)
    rows = ratio_rows(res)
    tg = targets(res) + mpi_targets(mpi, mpi_why)

    md = [
        "# twinpool benchmarks: the README's targets",
        "",
        f"Reproduce: `{COMMAND}` (from the repository root; about 9.5 minutes on 2 cores"
        f" (measured 9m17s and 9m38s), 2 of them for the MPI rows, which `{MPI_COMMAND}`"
        " runs alone).",
        "",
        f"- Date: {started:%Y-%m-%d %H:%M} UTC; commit {m['commit']}",
        f"- Machine: {m['nproc']} CPUs (nproc), {m['cpu']}, Linux {m['kernel']}",
        f"- Rust: {m['rustc']}; criterion 0.5, 10 samples per bench (flat sampling), mean shown",
        f"- Python: {py_meta.get('python', '?')} (multiprocessing start method: {py_meta.get('start_method', '?')})",
        f"- Load average before / after the run: {' '.join(load_before)} / {' '.join(load_after)}"
        " (the machine is shared; numbers vary by some 10-30% run to run)",
        "",
        "Ratios are **twinpool's time ÷ the peer's time** for the same work"
        " (below 1: twinpool is faster; for MiB/s rows, the inverse of the throughput ratio).",
        "Per-task numbers come from runs of many tasks (the count is in *per run*);"
        " the Python peer and procspawn run fewer tasks per run where the full count"
        " would take them minutes, which does not change a per-task cost.",
        "",
        "## Targets",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    md += [f"| {d} | {v} | {verdict(ok)} |" for d, v, ok in tg]
    md += ["", "![twinpool ÷ peer](chart.svg)", "", "## All numbers", ""]
    md += table_md(res)
    md += mpi_table_md(mpi_meta or {}, mpi)
    md += [
        "## What each peer is",
        "",
        "- `raw_crossbeam`: 2 threads pulling boxed closures from one crossbeam channel, results back over a second: the floor for a thread pool.",
        "- `threadpool`, `rayon_spawn`: `threadpool::ThreadPool::execute` / `rayon::ThreadPool::spawn` on 2 threads, results over a crossbeam channel.",
        "- In groups 8a-8c each submitting thread collects its own results, so `raw_crossbeam` there sends each result to its submitter's channel (a sender cloned per task, as for `threadpool` and `rayon_spawn`).",
        "- Group 9: all four pools alive at once, taking turns in 40 rounds of 250 round trips each (rotating order), while a busy pool of one thread per CPU computes for 50 µs then sleeps for 50 µs (about 100 µs with the timer's slack); the mean is over all of a contender's batches, the range is that of its batch means.",
        "- Group 10: each contender in a child process of the bench, 1M tasks submitted then collected after a 1,000-task warm-up; (peak RSS during the burst, VmHWM after resetting it by /proc/self/clear_refs, minus the RSS before it) / 1M. For twinpool it includes the `Vec` of futures the caller holds.",
        "- `raw_ipc_channel`: this bench executable re-run as a child that answers each ipc-channel byte message (a task per message); pipelined = one thread sends all while another receives.",
        "- `raw_pipe`: the same child over its stdin/stdout pipes, 8 bytes each way.",
        "- `procspawn`: `procspawn::Pool` (1.0); pipelined with at most 64 handles in flight, chunks as one spawn per 1000 items.",
        "- `raw_spawn_pipe`: start 2 raw pipe children (std `Command`, posix_spawn), one round trip each, close and reap; `raw_spawn_pipe_fork` adds a `pre_exec` hook, which makes std `fork` (twinpool started its workers so until commit 5e41bd3).",
        "- `memcpy`: `copy_from_slice` of 64 MiB into a preallocated buffer.",
        "- Group 11: one task at a time on a 1-worker pool, its `Vec<u8>` argument moved in (a fresh copy made outside the timing); `raw_ipc_channel` sends the same bytes as one ipc-channel byte message to a child that answers with their length.",
        "- Group 12: `cargo bench -p twinpool-benches --bench shared`: in each round a fresh 2-worker pool maps 100 tasks over the same 256 MiB, at most 4 ahead, either as clones of one `Shared` (made inside the timing) or as a fresh `Vec<u8>` per task; rounds alternate.",
        "- Group 13: a child of the bench with a 1-worker pool whose worker sleeps in a task while 1M `inc` tasks are submitted; (peak RSS during the submissions - RSS before) / 1M, the `Vec` of futures included.",
        "- Python: `benches/python_peer.py`, ThreadPoolExecutor / ProcessPoolExecutor with the same trivial task.",
        "- MPI: `benches/mpi.rs` under `mpirun -n 3 --oversubscribe` (rank 0 measures, ranks 1-2 serve, each with 1 worker process),"
        " against `benches/mpi4py_futures.py` under `mpirun -n 3 --oversubscribe python3 -m mpi4py.futures` (rank 0 runs it, ranks 1-2 are"
        " `MPIPoolExecutor()`'s workers), the same tiny task (`x + 1`), counts and chunksize; the raw ping-pongs are `mpirun -n 2`"
        " jobs of the same two programs (`--raw-ping-pong`, `--ping-pong`), rsmpi 0.8 and mpi4py, no pool.",
        "",
    ]
    (BENCHES / "RESULTS.md").write_text("\n".join(md))
    (BENCHES / "chart.svg").write_text(chart_svg(rows))

    readme = ROOT / "README.md"
    if readme.exists() and "--no-readme" not in sys.argv[1:]:
        text = readme.read_text()
        start, end = "<!-- bench:start -->", "<!-- bench:end -->"
        if start in text and end in text:
            summary = [
                "",
                f"Measured {started:%Y-%m-%d} at commit {m['commit']} on {m['nproc']} CPUs ({m['cpu']}), {m['rustc']};"
                f" reproduce with `{COMMAND}`. Details: [benches/RESULTS.md](benches/RESULTS.md).",
                "",
                "| target | measured | verdict |",
                "|---|---|---|",
            ]
            summary += [f"| {d} | {v} | {verdict(ok)} |" for d, v, ok in tg]
            summary += ["", "![twinpool ÷ peer](benches/chart.svg)", ""]
            pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
            text = pattern.sub(lambda _: start + "\n".join(summary) + end, text, count=1)
            readme.write_text(text)
            print("updated README.md between the bench markers", file=sys.stderr)
    print(f"wrote {BENCHES / 'RESULTS.md'} and {BENCHES / 'chart.svg'}", file=sys.stderr)


if __name__ == "__main__":
    main()
