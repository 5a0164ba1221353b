#!/usr/bin/env python3
"""One Nexmark query on Apache Flink SQL (PyFlink), for bench.py.

Reads person.json, auction.json and bid.json (JSON lines from `sabot nexmark-gen`) with
Flink's filesystem source, each with the watermark bench.py gives Sabot's sources, runs
the query (Flink's dialect, flink/qN.sql) into a blackhole sink at the given
parallelism, and prints one JSON line: "seconds", the time from submitting the job to
the end of its bounded input (the JVM's start and the planning before are not counted);
"cpu_seconds", what the JVM (PyFlink's gateway, which runs the job in its mini cluster)
spent over the same time; and "peak_rss_mib", the JVM's peak RSS.
"""

import argparse
import json
import os
import time
from pathlib import Path

from pyflink.table import EnvironmentSettings, TableEnvironment

TS = "TIMESTAMP(3)"
WATERMARK = "WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND"
TABLES = {
    "person": f"id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING, "
              f"state STRING, date_time {TS}, extra STRING",
    "auction": f"id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, "
               f"reserve BIGINT, date_time {TS}, expires {TS}, seller BIGINT, category BIGINT, "
               f"extra STRING",
    "bid": f"auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, "
           f"date_time {TS}, extra STRING",
}


CLK_TCK = os.sysconf("SC_CLK_TCK")


def jvm_pids():
    """This process's children: the gateway JVM."""
    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.extend(int(c) for c in children)
    return pids


def cpu_seconds(pids):
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def peak_rss_mib(pids):
    peak = 0.0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]) / 1024)
    return peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--query", required=True)
    ap.add_argument("--parallelism", type=int, default=1)
    args = ap.parse_args()

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    config = env.get_config()
    config.set("parallelism.default", str(args.parallelism))
    config.set("table.exec.resource.default-parallelism", str(args.parallelism))
    for name, columns in TABLES.items():
        path = Path(args.data) / f"{name}.json"
        env.execute_sql(
            f"CREATE TABLE {name} ({columns}, {WATERMARK}) WITH ("
            f"'connector' = 'filesystem', 'path' = 'file://{path}', 'format' = 'json', "
            f"'json.timestamp-format.standard' = 'ISO-8601')"
        )
    sql = Path(args.query).read_text().strip().rstrip(";")
    env.create_temporary_view("query_result", env.sql_query(sql))
    jvm = jvm_pids()
    cpu0 = cpu_seconds(jvm)
    started = time.perf_counter()
    result = env.execute_sql(
        "CREATE TABLE sink WITH ('connector' = 'blackhole') AS SELECT * FROM query_result"
    )
    result.wait()
    seconds = time.perf_counter() - started
    print(json.dumps({
        "seconds": seconds,
        "cpu_seconds": cpu_seconds(jvm) - cpu0,
        "peak_rss_mib": peak_rss_mib(jvm),
    }))


if __name__ == "__main__":
    main()
