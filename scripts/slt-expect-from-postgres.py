#!/usr/bin/env python3
"""Fills the expected results of an .slt skeleton from a real PostgreSQL.

The skeletons in sqllogictest/skeletons hold statements and queries without results;
this runs them against PostgreSQL (materialized views become plain views, FLUSH is
skipped) and prints the complete .slt file, so expected results come from PostgreSQL,
not from Sabot. Connection: PGHOST/PGPORT/PGUSER (default 127.0.0.1:55432, postgres).
The target database's public schema is dropped and recreated first.

    python3 scripts/slt-expect-from-postgres.py sqllogictest/skeletons/topn.slt \
        > sqllogictest/slt/topn.slt
"""
import os, re, subprocess, sys
CONN = ["-h", os.environ.get("PGHOST", "127.0.0.1"), "-p", os.environ.get("PGPORT", "55432"), "-U", os.environ.get("PGUSER", "postgres")]
src = open(sys.argv[1]).read()
subprocess.run(["psql", *CONN, "-qc","drop schema public cascade; create schema public"],check=True,capture_output=True)
blocks = re.split(r"\n\s*\n", src.strip())
out = []
def pg(sql, query):
    sql = re.sub(r"CREATE MATERIALIZED VIEW (\w+) AS", r"CREATE VIEW \1 AS", sql)
    r = subprocess.run(["psql", *CONN, "-At","-F","\x1f","-P","null=NULL","-v","ON_ERROR_STOP=1","-c",sql],capture_output=True,text=True)
    if r.returncode != 0:
        sys.exit(f"PG failed on {sql}: {r.stderr}")
    return r.stdout
for b in blocks:
    lines = b.split("\n")
    head = lines[0]
    if head.startswith("#"):
        # comment lines then a record
        i = 0
        while i < len(lines) and lines[i].startswith("#"):
            i += 1
        comments, lines = lines[:i], lines[i:]
        if not lines:
            out.append("\n".join(comments)); continue
        head = lines[0]
    else:
        comments = []
    sql = "\n".join(lines[1:])
    rec = comments + [head] + lines[1:]
    if head.startswith("statement ok"):
        if sql.strip().upper() != "FLUSH":
            pg(sql, False)
    elif head.startswith("statement error"):
        pass
    elif head.startswith("query"):
        res = pg(sql, True)
        rows = []
        for line in res.splitlines():
            vals = ["(empty)" if v == "" else v for v in line.split("\x1f")]
            rows.append(" ".join(vals))
        if "rowsort" in head:
            rows.sort()
        rec += ["----"] + rows
    out.append("\n".join(rec))
print("\n\n".join(out))
