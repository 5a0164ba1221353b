"""Avro container files for avro_files.rs, written and read by fastavro (an Avro
implementation independent of Sabot's).

    avro_files.py write PATH CODEC FIRST LAST VERSION
        Orders FIRST..=LAST into PATH (written as .NAME, then renamed), blocks of 1000
        records. VERSION 1: id, name, amount (decimal), at (timestamp-micros), tags
        (array), note (nullable, NULL for odd ids). VERSION 2: fields reordered, note
        dropped, an int field `extra` added, names prefixed with "v2-".
    avro_files.py read DIR
        Prints the records of DIR's part-*.avro files, in name order, as one JSON list.
"""

import datetime
import decimal
import glob
import json
import os
import sys

import fastavro

AMOUNT = {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}
AT = {"type": "long", "logicalType": "timestamp-micros"}
TAGS = {"type": "array", "items": "string"}

V1 = {
    "type": "record",
    "name": "order",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "amount", "type": AMOUNT},
        {"name": "at", "type": AT},
        {"name": "tags", "type": TAGS},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}

V2 = {
    "type": "record",
    "name": "order",
    "namespace": "shop",
    "fields": [
        {"name": "tags", "type": TAGS},
        {"name": "extra", "type": "int"},
        {"name": "at", "type": AT},
        {"name": "amount", "type": AMOUNT},
        {"name": "name", "type": "string"},
        {"name": "id", "type": "long"},
    ],
}

EPOCH = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def order(i, version):
    row = {
        "id": i,
        "name": ("v2-" if version == 2 else "") + f"n{i}",
        "amount": decimal.Decimal(i) / 100,
        "at": EPOCH + datetime.timedelta(seconds=i),
        "tags": [f"t{i % 3}"],
    }
    if version == 1:
        row["note"] = None if i % 2 else f"note {i}"
    else:
        row["extra"] = i * 2
    return row


def write(path, codec, first, last, version):
    schema = fastavro.parse_schema(V1 if version == 1 else V2)
    records = [order(i, version) for i in range(first, last + 1)]
    hidden = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    with open(hidden, "wb") as f:
        fastavro.writer(f, schema, records, codec=codec, sync_interval=1000 * 40)
    os.rename(hidden, path)


def plain(value):
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def read(directory):
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "part-*.avro"))):
        with open(path, "rb") as f:
            out.extend(plain(r) for r in fastavro.reader(f))
    print(json.dumps(out))


def main():
    if sys.argv[1] == "write":
        _, _, path, codec, first, last, version = sys.argv
        write(path, codec, int(first), int(last), int(version))
    elif sys.argv[1] == "read":
        read(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]}")


if __name__ == "__main__":
    main()
