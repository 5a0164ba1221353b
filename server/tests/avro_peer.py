"""The Avro tests' independent peer: a tiny Confluent-compatible schema registry over
HTTP (with basic authentication), and Confluent's own Python client producing Avro
records in the registry's wire format through its AvroSerializer.

Driven over stdin, one JSON command per line; answers one JSON line each:

  {"cmd": "produce", "topic": t, "partition": p, "schema": s, "values": [...],
   "key_schema": ks, "keys": [...]}      values may hold null (a tombstone)
  {"cmd": "produce_raw", "topic": t, "partition": p, "hex": ["00ff..", ...]}
  {"cmd": "consume", "topic": t, "min": n}
                                        every record of t (at least n), keys and values
                                        decoded by AvroDeserializer with the schemas the
                                        registry has: {"records": [{"key", "value"}]}
  {"cmd": "registry", "ids": false}     answer 503 for schemas by id (a registry that is
                                        failing); true: answer again

It first prints {"registry": "http://127.0.0.1:PORT"}. Usage: avro_peer.py BOOTSTRAP
"""

import base64
import decimal
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

USER, PASSWORD = "sabot", "s3cret"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.schemas = []  # id - 1 -> schema text
        self.subjects = {}  # subject -> [id, ...]

    def register(self, subject, schema):
        with self.lock:
            if schema in self.schemas:
                sid = self.schemas.index(schema) + 1
            else:
                self.schemas.append(schema)
                sid = len(self.schemas)
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            return sid, versions.index(sid) + 1


STORE = Store()
IDS_UP = threading.Event()
IDS_UP.set()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if self.headers.get("Authorization") == AUTH:
            return True
        self.answer(401, {"error_code": 401, "message": "Unauthorized"})
        return False

    def do_GET(self):
        if not self.authorized():
            return
        path = self.path.split("?")[0]
        m = re.fullmatch(r"/schemas/ids/(\d+)", path)
        if m and not IDS_UP.is_set():
            return self.answer(503, {"error_code": 50301, "message": "unavailable"})
        if m:
            sid = int(m.group(1))
            if 1 <= sid <= len(STORE.schemas):
                return self.answer(200, {"schema": STORE.schemas[sid - 1]})
            return self.answer(404, {"error_code": 40403, "message": "Schema not found"})
        m = re.fullmatch(r"/subjects/([^/]+)/versions/latest", path)
        if m:
            versions = STORE.subjects.get(m.group(1))
            if not versions:
                return self.answer(404, {"error_code": 40401, "message": "Subject not found"})
            sid = versions[-1]
            return self.answer(200, {"subject": m.group(1), "version": len(versions),
                                     "id": sid, "schema": STORE.schemas[sid - 1]})
        self.answer(404, {"error_code": 404, "message": "unknown path " + path})

    def do_POST(self):
        if not self.authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        path = self.path.split("?")[0]
        m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
        if not m:
            return self.answer(404, {"error_code": 404, "message": "unknown path " + path})
        schema = json.dumps(json.loads(body["schema"]))
        sid, version = STORE.register(m.group(1), schema)
        self.answer(200, {"id": sid, "subject": m.group(1), "version": version,
                          "schema": schema})


def coerce(schema, value):
    """A record's decimal fields, sent as strings (JSON has no decimals), as Decimals."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for f in schema.get("fields", []):
        t = f["type"]
        if isinstance(t, dict) and t.get("logicalType") == "decimal" and f["name"] in out:
            out[f["name"]] = decimal.Decimal(out[f["name"]])
    return out


def consume(bootstrap, client, topic, least):
    """Every record of `topic`: at least `least`, then until none comes for a second."""
    deserialize = AvroDeserializer(client)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"peer-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    out = []
    deadline = time.time() + 60
    quiet_since = time.time()
    while time.time() < deadline:
        msg = consumer.poll(0.2)
        if msg is None or msg.error():
            if len(out) >= least and time.time() - quiet_since > 1.0:
                break
            continue
        quiet_since = time.time()
        key = msg.key()
        value = msg.value()
        out.append({
            "key": None if key is None else deserialize(
                key, SerializationContext(topic, MessageField.KEY)),
            "value": None if value is None else deserialize(
                value, SerializationContext(topic, MessageField.VALUE)),
        })
    consumer.close()
    return out


def main():
    bootstrap = sys.argv[1]
    registry = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{registry.server_address[1]}"
    client = SchemaRegistryClient({"url": url, "basic.auth.user.info": f"{USER}:{PASSWORD}"})
    producer = Producer({"bootstrap.servers": bootstrap})
    serializers = {}

    def serializer(schema):
        text = json.dumps(schema)
        if text not in serializers:
            serializers[text] = AvroSerializer(client, text)
        return serializers[text]

    print(json.dumps({"registry": url}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "produce":
            topic = cmd["topic"]
            values = serializer(cmd["schema"])
            keys = serializer(cmd["key_schema"]) if "key_schema" in cmd else None
            for i, v in enumerate(cmd["values"]):
                value = None if v is None else values(
                    coerce(cmd["schema"], v), SerializationContext(topic, MessageField.VALUE))
                key = None
                if keys is not None:
                    key = keys(cmd["keys"][i], SerializationContext(topic, MessageField.KEY))
                producer.produce(topic, value=value, key=key, partition=cmd["partition"])
            producer.flush(30)
        elif cmd["cmd"] == "produce_raw":
            for h in cmd["hex"]:
                producer.produce(cmd["topic"], value=bytes.fromhex(h),
                                 partition=cmd["partition"])
            producer.flush(30)
        elif cmd["cmd"] == "consume":
            records = consume(bootstrap, client, cmd["topic"], cmd["min"])
            print(json.dumps({"ok": True, "records": records}, default=str), flush=True)
            continue
        elif cmd["cmd"] == "registry":
            if cmd["ids"]:
                IDS_UP.set()
            else:
                IDS_UP.clear()
        print(json.dumps({"ok": True}), flush=True)


if __name__ == "__main__":
    main()
