#!/usr/bin/env python3
"""Soak test: Nexmark q5 and q7 on an endless bid stream with a watermark, RSS sampled.

Starts `sabot serve` on a fresh data directory, creates an endless rate-limited nexmark
`bid` source with `WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND`, and the
views `q5` and `q7` from benches/nexmark/queries. Then, once a second for --seconds, it
reads the server's resident memory from /proc; every --probe seconds it also asks the
server for the watermark and the views' row counts. Writes one CSV line per sample
(elapsed_s, rss_mib, watermark, q5_rows, q7_rows) to --out and prints a summary: RSS
per minute and the growth over the second half of the run. With watermarks the windows'
aggregates, the window join and the interval join drop what can no longer change, so
the curve must flatten once the first windows have closed.

Only the Python standard library and psql are needed.
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
QUERIES = os.path.join(HERE, "..", "nexmark", "queries")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(port, sql):
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "sabot", "-d", "sabot",
         "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, timeout=120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{sql}: {out.stderr.strip()}")
    return out.stdout.strip()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def engine_figures(http):
    """From /metrics: entries held by all operators, and RocksDB's memtables, table
    readers and block cache, in MiB."""
    try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=30).read().decode()
    except OSError:
        return ("", "", "", "")
    state = 0.0
    rocks = {}
    for line in page.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.startswith("sabot_operator_state_rows{"):
            state += float(value)
        elif series.startswith("sabot_rocksdb_property{"):
            rocks[series.split('"')[1]] = float(value) / (1024 * 1024)
    return (f"{state:.0f}", f"{rocks.get('cur-size-all-mem-tables', 0):.1f}",
            f"{rocks.get('estimate-table-readers-mem', 0):.1f}",
            f"{rocks.get('block-cache-usage', 0):.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sabot", default=None, help="sabot binary (default: target/release, then target/debug)")
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--probe", type=int, default=10, help="seconds between catalog probes")
    ap.add_argument("--gap-ns", type=int, default=100_000,
                    help="nexmark.min.event.gap.in.ns: 100000 is 10,000 events/s")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="soak.csv")
    ap.add_argument("--no-watermark", action="store_true",
                    help="declare no watermark (for comparison: nothing is purged)")
    args = ap.parse_args()

    sabot = args.sabot
    if sabot is None:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "..", "target"))
        for profile in ("release", "debug"):
            candidate = os.path.join(target, profile, "sabot")
            if os.path.exists(candidate):
                sabot = candidate
                break
    if sabot is None or shutil.which("psql") is None:
        sys.exit("needs a built sabot binary (--sabot) and psql")

    data = tempfile.mkdtemp(prefix="sabot-soak-")
    port, http = free_port(), free_port()
    server = subprocess.Popen(
        [sabot, "serve", "--data-dir", data, "--pg-listen", f"127.0.0.1:{port}",
         "--http-listen", f"127.0.0.1:{http}", "--workers", str(args.workers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while True:
            try:
                psql(port, "SELECT 1")
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        watermark = "" if args.no_watermark else (
            ", WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND")
        psql(port, (
            "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP"
            f"{watermark}) WITH (connector = 'nexmark', nexmark.table.type = 'Bid', "
            f"nexmark.min.event.gap.in.ns = '{args.gap_ns}')"
        ))
        for q in ("q5", "q7"):
            with open(os.path.join(QUERIES, f"{q}.sql")) as f:
                psql(port, f"CREATE MATERIALIZED VIEW {q} AS {f.read()}")
        start = time.time()
        samples = []
        wm, n5, n7 = "", "", ""
        figures = ("", "", "", "")
        with open(args.out, "w") as out:
            out.write("elapsed_s,rss_mib,watermark,q5_rows,q7_rows,"
                      "state_entries,memtables_mib,table_readers_mib,block_cache_mib\n")
            while time.time() - start < args.seconds:
                elapsed = time.time() - start
                if server.poll() is not None:
                    sys.exit(f"sabot exited with {server.returncode} after {elapsed:.0f} s")
                if not samples or int(elapsed) % args.probe == 0:
                    wm = psql(port, "SELECT max(watermark) FROM sabot_catalog.watermarks")
                    if not wm:
                        wm = psql(port, "SELECT max(date_time) FROM q7")
                    n5 = psql(port, "SELECT count(*) FROM q5")
                    n7 = psql(port, "SELECT count(*) FROM q7")
                    figures = engine_figures(http)
                rss = rss_mib(server.pid)
                samples.append((elapsed, rss))
                out.write(f"{elapsed:.1f},{rss:.1f},{wm},{n5},{n7},{','.join(figures)}\n")
                out.flush()
                time.sleep(max(0.0, 1.0 - (time.time() - start - elapsed)))
        print(f"sabot: {sabot}; {args.seconds} s; events every {args.gap_ns} ns; workers {args.workers}")
        print(f"last watermark {wm}; q5 rows {n5}; q7 rows {n7}")
        print("minute  rss_mib")
        for m in range(0, args.seconds // 60 + 1):
            near = [r for t, r in samples if m * 60 <= t < m * 60 + 1.5]
            if near:
                print(f"{m:6d}  {near[0]:7.1f}")
        half = [r for t, r in samples if t >= args.seconds / 2]
        if half:
            print(f"second half: min {min(half):.1f} MiB, max {max(half):.1f} MiB, "
                  f"end - start {half[-1] - half[0]:+.1f} MiB")
        print(f"peak {max(r for _, r in samples):.1f} MiB; samples in {args.out}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
