#!/usr/bin/env python3
"""Nexmark on Sabot, and on Apache Flink SQL over the same events.

For each query (queries/qN.sql) a fresh `sabot serve` gets the three nexmark sources
(bounded to --events, no rate limit, one split per worker, a 4-second watermark on
date_time) and the query as a materialized view (with --sink: as `CREATE SINK ... AS
query` into a blackhole, keeping nothing, as Flink's side does). The clock runs from the
CREATE until SHOW JOBS says every source is read to its end and a FLUSH has made the last
epoch visible. Reported per query:

- events/s: --events divided by that time; per core: divided by --workers;
- CPU seconds of the server over that time (/proc/PID/stat), and events per CPU second;
- peak RSS of the server (VmHWM);
- freshness p50/p99: SHOW JOBS' Freshness column sampled every 100 ms while it runs
  (seconds since the view last reflected everything committed to what it reads);
- the view's rows at the end.

With --flink, flink_job.py runs the same query (flink/qN.sql where Flink needs it
written differently, else the query through flink_dialect()) in a
PyFlink venv (--flink-python, or one it makes at --flink-venv) over the events `sabot nexmark-gen` wrote as JSON lines, read by Flink's
filesystem source with the same watermark, parallelism = --workers, into a blackhole
sink; its time is the job's own (from submission to the end of the bounded input, JVM
start excluded), its CPU that of the JVM over the same time, and its peak RSS the
JVM's. The ratio Sabot/Flink of events/s is printed per query.

Output: a progress line while running, a table at the end, --json (all figures) and
--svg (a bar chart of events/s per core) when given. --check makes it a smoke test: it
fails unless every view finished with the rows the query must give (see check()).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIDE_INPUT_KEYS = 10_000
WATERMARK = "WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND"


def all_queries():
    names = [p.stem for p in (HERE / "queries").glob("q*.sql")]
    return sorted(names, key=lambda n: int(n[1:]))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class Sabot:
    """A `sabot serve` on free ports over a fresh data directory."""

    def __init__(self, binary, workers, data_dir, gpu="off"):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                str(binary), "serve",
                "--data-dir", str(data_dir),
                "--pg-listen", f"127.0.0.1:{self.port}",
                "--http-listen", f"127.0.0.1:{free_port()}",
                "--workers", str(workers),
                "--checkpoint-interval", "200ms",
                "--gpu", gpu,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(Path(data_dir).parent / "sabot.log", "wb"),
        )
        deadline = time.time() + 60
        while True:
            try:
                self.conn = psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user=bench dbname=sabot",
                    autocommit=True,
                )
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.time() > deadline:
                    log = (Path(data_dir).parent / "sabot.log").read_text(errors="replace")
                    raise RuntimeError(f"sabot did not start (exit {self.proc.poll()}): "
                                       f"{log.strip().splitlines()[-1:] if log.strip() else ''}")
                time.sleep(0.1)

    def rows(self, sql):
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []

    def stop(self):
        self.conn.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "work", None):
            shutil.rmtree(self.work, ignore_errors=True)


def sources_of(sql):
    return [k for k in ("person", "auction", "bid") if re.search(rf"\b{k}\b", sql, re.I)]


def run_sabot(binary, name, sql, events, workers, progress, sink=False, gpu="off"):
    work = Path(tempfile.mkdtemp(prefix=f"sabot-nexmark-{name}-"))
    server = Sabot(binary, workers, work / "data", gpu)
    server.work = work
    try:
        for kind in sources_of(sql):
            server.rows(
                f"CREATE SOURCE {kind} ({WATERMARK}) WITH (connector = 'nexmark', "
                f"nexmark.table.type = '{kind}', nexmark.event.num = '{events}', "
                f"nexmark.split.num = '{workers}', nexmark.min.event.gap.in.ns = '0')"
            )
        if re.search(r"\bside_input\b", sql):
            values = ", ".join(f"({k}, 'v{k * 7 % 101}')" for k in range(SIDE_INPUT_KEYS))
            server.rows("CREATE TABLE side_input (key BIGINT PRIMARY KEY, value TEXT)")
            server.rows(f"INSERT INTO side_input VALUES {values}")
            server.rows("FLUSH")
        pid = server.proc.pid
        cpu0 = cpu_seconds(pid)
        t0 = time.perf_counter()
        if sink:
            server.rows(f"CREATE SINK {name} AS {sql} WITH (connector = 'blackhole')")
        else:
            server.rows(f"CREATE MATERIALIZED VIEW {name} AS {sql}")
        freshness = []
        while True:
            jobs = {r[0]: r for r in server.rows("SHOW JOBS")}
            job = jobs.get(name)
            if job is None:
                raise RuntimeError(f"{name}: not in SHOW JOBS: {jobs}")
            status, read, total, fresh = job[1], job[2], job[3], job[-1]
            if fresh is not None:
                freshness.append(float(fresh))
            progress(name, read, total, time.perf_counter() - t0)
            if status == "finished":
                break
            if status == "stopped":
                raise RuntimeError(f"{name}: the view stopped: {job}")
            time.sleep(0.1)
        server.rows("FLUSH")
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds(pid) - cpu0
        rss = peak_rss_mib(pid)
        rows = None if sink else server.rows(f"SELECT count(*) FROM {name}")[0][0]
        return {
            "seconds": seconds,
            "cpu_seconds": cpu,
            "peak_rss_mib": rss,
            "freshness_p50_s": percentile(freshness, 0.5),
            "freshness_p99_s": percentile(freshness, 0.99),
            "rows": rows,
            "server": server,
        }
    except Exception:
        server.stop()
        raise


def check(name, result, events):
    """The smoke test's check, beyond every view reaching `finished` (run_sabot waits for
    it): q0 and q1 hold exactly the generated bids (one in 50 events is a person, three
    are auctions), q2 only the auctions it names. server/tests/nexmark.rs checks every
    query against a batch evaluation of the same events."""
    bids = sum(1 for e in range(events) if e % 50 >= 4)
    server = result["server"]
    if result["rows"] is None:
        return  # a blackhole sink: finishing is all there is to check
    if name in ("q0", "q1"):
        assert result["rows"] == bids, f"{name} has {result['rows']} rows, {bids} bids were generated"
    if name == "q2":
        wrong = server.rows("SELECT count(*) FROM q2 WHERE auction NOT IN (1007, 1020, 2001, 2019, 2087)")
        assert wrong[0][0] == 0, f"q2 has rows of other auctions: {wrong}"


# Queries Flink runs: flink/qN.sql where the query must be written differently (window
# TVFs), else Sabot's text through flink_dialect().
FLINK_QUERIES = {f"q{n}" for n in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19,
                                   20, 21, 22)}


def flink_dialect(sql):
    """Sabot's spelling of a few functions as Flink SQL spells them."""
    sql = sql.replace("'%Y-%m-%d'", "'yyyy-MM-dd'").replace("'%H:%M'", "'HH:mm'")
    sql = re.sub(r"\bto_char\(", "DATE_FORMAT(", sql)
    # (regexp_match(s, p))[n] is REGEXP_EXTRACT(s, p, n).
    sql = re.sub(r"\(regexp_match\((\w+), ('[^']*')\)\)\[(\d+)\]", r"REGEXP_EXTRACT(\1, \2, \3)", sql)
    # Column names that are keywords in Flink SQL.
    sql = re.sub(r"\bAS (day|date|time|minute|avg|final)\b", r"AS `\1`", sql)
    # split_part counts from 1, SPLIT_INDEX from 0.
    sql = re.sub(r"split_part\((\w+), ('[^']*'), (\d+)\)",
                 lambda m: f"SPLIT_INDEX({m[1]}, {m[2]}, {int(m[3]) - 1})", sql)
    return sql


def run_flink(flink_python, data_dir, name, workers):
    """flink_job.py for one query; None for a query with no Flink version."""
    if name not in FLINK_QUERIES:
        return None
    own = HERE / "flink" / f"{name}.sql"
    sql = own.read_text() if own.exists() else flink_dialect(
        (HERE / "queries" / f"{name}.sql").read_text())
    query = Path(tempfile.mkdtemp(prefix="flink-query-")) / f"{name}.sql"
    query.write_text(sql)
    cmd = [str(flink_python), str(HERE / "flink_job.py"), "--data", str(data_dir),
           "--query", str(query), "--parallelism", str(workers)]
    done = subprocess.run(cmd, capture_output=True)
    shutil.rmtree(query.parent, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"flink {name} failed:\n{done.stderr.decode()[-3000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def svg_chart(results, path):
    """Bars of events/s per core per query: Sabot, and Flink where it ran."""
    names = [r["query"] for r in results]
    series = [("Sabot", "sabot", "#1f77b4"), ("Flink", "flink", "#ff7f0e")]
    values = [(r.get("sabot") or {}).get("events_per_s_per_core") or 0 for r in results]
    values += [(r.get("flink") or {}).get("events_per_s_per_core") or 0 for r in results]
    top = max(values + [1])
    width, height, left, bottom = 60 + 40 * len(names), 320, 60, 40
    group = (width - left) / max(len(names), 1)
    bar = group / 3
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="10">',
             f'<text x="{left}" y="14" font-size="12">Nexmark events/s per core</text>']
    for tick in range(5):
        v = top * tick / 4
        y = height - bottom - (height - bottom - 30) * tick / 4
        parts.append(f'<line x1="{left}" x2="{width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">{v / 1000:.0f}K</text>')
    for i, r in enumerate(results):
        x0 = left + i * group + bar / 2
        for j, (_, key, color) in enumerate(series):
            v = (r.get(key) or {}).get("events_per_s_per_core") or 0
            h = (height - bottom - 30) * v / top
            parts.append(f'<rect x="{x0 + j * bar:.1f}" y="{height - bottom - h:.1f}" '
                         f'width="{bar:.1f}" height="{h:.1f}" fill="{color}"/>')
        parts.append(f'<text x="{x0 + bar:.1f}" y="{height - bottom + 14}" '
                     f'text-anchor="middle">{r["query"]}</text>')
    for j, (label, _, color) in enumerate(series):
        parts.append(f'<rect x="{left + 200 + 70 * j}" y="5" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{left + 214 + 70 * j}" y="14">{label}</text>')
    parts.append("</svg>")
    Path(path).write_text("\n".join(parts))


FLINK_PACKAGE = "apache-flink==1.20.*"


def flink_venv(venv):
    """The python of `venv` with PyFlink, installing both if needed; None (with a message)
    when that cannot be done (no network, no venv module)."""
    python = venv / "bin" / "python"
    try:
        if not python.exists():
            print(f"installing {FLINK_PACKAGE} into {venv} (once)", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        has = subprocess.run([str(python), "-c", "import pyflink"], capture_output=True)
        if has.returncode != 0:
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", FLINK_PACKAGE],
                           check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"Flink skipped: cannot install {FLINK_PACKAGE} into {venv}: {e}", file=sys.stderr)
        return None
    return str(python)


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--queries", default=",".join(all_queries()),
                    help="comma-separated, e.g. q0,q1,q5 (default: q0 to q22)")
    ap.add_argument("--sabot", default=str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "sabot"))
    ap.add_argument("--flink", action="store_true",
                    help="also run Flink SQL (needs Java 17; PyFlink is installed into a venv)")
    ap.add_argument("--flink-python", default=os.environ.get("SABOT_FLINK_PYTHON"),
                    help="python of a venv with apache-flink (default: $SABOT_FLINK_PYTHON, "
                         "else the venv of --flink-venv, made if missing)")
    ap.add_argument("--flink-venv", default=str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "flink-venv"),
                    help="where to install PyFlink when no --flink-python is given")
    ap.add_argument("--flink-events",
                    help="a directory `sabot nexmark-gen --events N` wrote (N = --events); "
                         "default: write one for this run")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--svg", help="write a bar chart here")
    ap.add_argument("--check", action="store_true", help="smoke test: check the views' rows")
    ap.add_argument("--sink", action="store_true",
                    help="run each query as CREATE SINK ... AS query WITH (connector = "
                         "'blackhole') instead of a materialized view: nothing is kept, as "
                         "on Flink's side (rows are then not counted)")
    ap.add_argument("--gpu", choices=["off", "auto", "on"], default="off",
                    help="sabot serve --gpu (gpu/README.md): where aggregations and filters run")
    ap.add_argument("--gpu-compare", action="store_true",
                    help="run each query on Sabot twice in the same run, --gpu off and "
                         "--gpu on (needs the GPU shim: SABOT_GPU_LIBRARY), and report both")
    args = ap.parse_args()

    names = [q.strip() for q in args.queries.split(",") if q.strip()]
    flink_data = None
    if args.flink:
        if shutil.which("java") is None:
            print("Flink skipped: needs `java` (17) on PATH", file=sys.stderr)
            args.flink = False
        elif not args.flink_python:
            args.flink_python = flink_venv(Path(args.flink_venv))
            args.flink = args.flink_python is not None
    if args.flink:
        if args.flink_events:
            flink_events = Path(args.flink_events)
        else:
            flink_data = Path(tempfile.mkdtemp(prefix="nexmark-events-"))
            flink_events = flink_data
            subprocess.run([args.sabot, "nexmark-gen", "--events", str(args.events),
                            "--out", str(flink_data)], check=True,
                           stderr=subprocess.DEVNULL)

    def progress(name, read, total, secs):
        pct = 100.0 * read / total if total else 0.0
        bar = "#" * int(pct / 5)
        print(f"\r{name:>4} [{bar:<20}] {pct:5.1f}% {secs:6.1f}s", end="", file=sys.stderr, flush=True)

    results = []
    for name in names:
        sql = (HERE / "queries" / f"{name}.sql").read_text().strip().rstrip(";")
        entry = {"query": name, "events": args.events, "workers": args.workers,
                 "sabot_mode": "blackhole sink" if args.sink else "materialized view"}
        modes = ["off", "on"] if args.gpu_compare else [args.gpu]
        for mode in modes:
            r = run_sabot(args.sabot, name, sql, args.events, args.workers, progress, args.sink,
                          mode)
            try:
                if args.check:
                    check(name, r, args.events)
            finally:
                r.pop("server").stop()
            print(file=sys.stderr)
            r["events_per_s"] = args.events / r["seconds"]
            r["events_per_s_per_core"] = r["events_per_s"] / args.workers
            r["events_per_cpu_s"] = args.events / r["cpu_seconds"] if r["cpu_seconds"] else None
            r["gpu"] = mode
            entry["sabot_gpu" if args.gpu_compare and mode == "on" else "sabot"] = r
        if args.gpu_compare:
            entry["gpu_over_cpu"] = entry["sabot_gpu"]["events_per_s"] / entry["sabot"]["events_per_s"]
        r = entry["sabot"]
        if args.flink:
            f = run_flink(args.flink_python, flink_events, name, args.workers)
            if f is not None:
                f["events_per_s"] = args.events / f["seconds"]
                f["events_per_s_per_core"] = f["events_per_s"] / args.workers
                f["events_per_cpu_s"] = (args.events / f["cpu_seconds"]
                                         if f["cpu_seconds"] else None)
                entry["flink"] = f
                entry["sabot_over_flink"] = r["events_per_s"] / f["events_per_s"]
        results.append(entry)

    header = (f"{'query':>5} {'events/s':>10} {'/core':>9} {'cpu s':>7} {'ev/cpu-s':>9} "
              f"{'RSS MiB':>8} {'fresh p50':>9} {'p99':>6} {'rows':>9}")
    if args.gpu_compare:
        header += f" {'gpu ev/s':>10} {'/core':>9} {'gpu/cpu':>7}"
    if args.flink:
        header += f" {'flink ev/s':>10} {'/core':>9} {'ev/cpu-s':>9} {'RSS MiB':>8} {'ratio':>6}"
    print(header)
    for e in results:
        s = e["sabot"]
        line = (f"{e['query']:>5} {s['events_per_s']:>10.0f} {s['events_per_s_per_core']:>9.0f} "
                f"{s['cpu_seconds']:>7.1f} {fmt(s['events_per_cpu_s'], '>9.0f')} "
                f"{fmt(s['peak_rss_mib'], '>8.0f')} {fmt(s['freshness_p50_s'], '>9.2f')} "
                f"{fmt(s['freshness_p99_s'], '>6.2f')} {fmt(s['rows'], '>9')}")
        if args.gpu_compare:
            g = e["sabot_gpu"]
            line += (f" {g['events_per_s']:>10.0f} {g['events_per_s_per_core']:>9.0f} "
                     f"{e['gpu_over_cpu']:>7.2f}")
        if args.flink:
            f = e.get("flink")
            line += (f" {f['events_per_s']:>10.0f} {f['events_per_s_per_core']:>9.0f} "
                     f"{fmt(f['events_per_cpu_s'], '>9.0f')} {f['peak_rss_mib']:>8.0f} "
                     f"{e['sabot_over_flink']:>6.2f}" if f
                     else f" {'-':>10} {'-':>9} {'-':>9} {'-':>8} {'-':>6}")
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.svg:
        svg_chart(results, args.svg)
    if flink_data:
        shutil.rmtree(flink_data, ignore_errors=True)


if __name__ == "__main__":
    main()
