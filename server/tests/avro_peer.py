"""The registry tests' independent peer: a tiny Confluent-compatible schema registry
over HTTP (with basic authentication; Avro and Protobuf schemas, references), and
Confluent's own Python client producing records in the registry's wire format through
its AvroSerializer and ProtobufSerializer.

Driven over stdin, one JSON command per line; answers one JSON line each:

  {"cmd": "produce", "topic": t, "partition": p, "schema": s, "values": [...],
   "key_schema": ks, "keys": [...]}      values may hold null (a tombstone)
  {"cmd": "produce_proto", "topic": t, "partition": p, "first": i, "count": n}
                                        shop.Order messages i.. (see proto_classes)
  {"cmd": "produce_raw", "topic": t, "partition": p, "hex": ["00ff..", ...]}
  {"cmd": "consume", "topic": t, "min": n}
                                        every record of t (at least n), keys and values
                                        decoded by AvroDeserializer with the schemas the
                                        registry has: {"records": [{"key", "value"}]}
  {"cmd": "registry", "ids": false}     answer 503 for schemas by id (a registry that is
                                        failing); true: answer again

It first prints {"registry": "http://127.0.0.1:PORT"}. Usage: avro_peer.py BOOTSTRAP
[--tls DIR]: with --tls the registry speaks HTTPS with a certificate for localhost
signed by a test CA (both made here with `cryptography`; the CA in DIR/ca.pem), and it
prints
{"registry": "https://localhost:PORT", "ca": "DIR/ca.pem"}.
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
        self.schemas = []  # id - 1 -> {"schema", "schemaType", "references"}
        self.subjects = {}  # subject -> [id, ...]

    def register(self, subject, entry):
        with self.lock:
            if entry in self.schemas:
                sid = self.schemas.index(entry) + 1
            else:
                self.schemas.append(entry)
                sid = len(self.schemas)
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            return sid, versions.index(sid) + 1

    def answer(self, sid):
        entry = self.schemas[sid - 1]
        out = {"schema": entry["schema"], "references": entry["references"]}
        if entry["schemaType"] != "AVRO":
            out["schemaType"] = entry["schemaType"]
        return out


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
                return self.answer(200, STORE.answer(sid))
            return self.answer(404, {"error_code": 40403, "message": "Schema not found"})
        m = re.fullmatch(r"/subjects/([^/]+)/versions/(latest|\d+)", path)
        if m:
            versions = STORE.subjects.get(m.group(1))
            if not versions:
                return self.answer(404, {"error_code": 40401, "message": "Subject not found"})
            version = len(versions) if m.group(2) == "latest" else int(m.group(2))
            if not 1 <= version <= len(versions):
                return self.answer(404, {"error_code": 40402, "message": "Version not found"})
            sid = versions[version - 1]
            return self.answer(200, {"subject": m.group(1), "version": version, "id": sid,
                                     **STORE.answer(sid)})
        self.answer(404, {"error_code": 404, "message": "unknown path " + path})

    def do_POST(self):
        if not self.authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        path = self.path.split("?")[0]
        kind = body.get("schemaType", "AVRO")
        schema = body["schema"]
        if kind == "AVRO":
            schema = json.dumps(json.loads(schema))
        # Protobuf schemas are kept as the client registers them (a base64 serialized
        # descriptor), which is what a Confluent registry answers with ?format=serialized.
        entry = {"schema": schema, "schemaType": kind, "references": body.get("references", [])}
        m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
        if m:
            sid, version = STORE.register(m.group(1), entry)
            return self.answer(200, {"id": sid, "subject": m.group(1), "version": version,
                                     "schema": schema})
        m = re.fullmatch(r"/subjects/([^/]+)", path)
        if m:  # lookup: is the schema registered under the subject?
            versions = STORE.subjects.get(m.group(1), [])
            for version, sid in enumerate(versions, 1):
                if STORE.schemas[sid - 1] == entry:
                    return self.answer(200, {"id": sid, "subject": m.group(1),
                                             "version": version, "schema": schema})
            return self.answer(404, {"error_code": 40403, "message": "Schema not found"})
        self.answer(404, {"error_code": 404, "message": "unknown path " + path})


def proto_classes():
    """shop.Order of shop.proto, which imports common.proto (shop.Item, registered as a
    reference) and google/protobuf/timestamp.proto (well known: not registered). Order
    is the second message of its file, so its records carry message index [1]."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    F = descriptor_pb2.FieldDescriptorProto
    ts = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts)
    common = descriptor_pb2.FileDescriptorProto(name="common.proto", package="shop",
                                                syntax="proto3")
    item = common.message_type.add(name="Item")
    item.field.add(name="sku", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item.field.add(name="n", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    shop = descriptor_pb2.FileDescriptorProto(
        name="shop.proto", package="shop", syntax="proto3",
        dependency=["common.proto", "google/protobuf/timestamp.proto"])
    header = shop.message_type.add(name="Header")
    header.field.add(name="source", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    order = shop.message_type.add(name="Order")
    order.field.add(name="id", number=1, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    order.field.add(name="customer", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    order.field.add(name="item", number=3, type=F.TYPE_MESSAGE, type_name=".shop.Item",
                    label=F.LABEL_OPTIONAL)
    order.field.add(name="at", number=4, type=F.TYPE_MESSAGE,
                    type_name=".google.protobuf.Timestamp", label=F.LABEL_OPTIONAL)
    order.field.add(name="tags", number=5, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    for f in (ts, common, shop):
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Order"))


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


def self_signed(directory):
    """A CA (written to DIR/ca.pem) and a certificate it signs for localhost and
    127.0.0.1: (ca, cert, key) paths."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, key, issuer, issuer_key, ca):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("sabot test CA", ca_key, "sabot test CA", ca_key, True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate("localhost", key, "sabot test CA", ca_key, False)
    paths = [os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


def main():
    bootstrap = sys.argv[1]
    registry = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = registry.server_address[1]
    hello = {"registry": f"http://127.0.0.1:{port}"}
    conf = {"url": hello["registry"], "basic.auth.user.info": f"{USER}:{PASSWORD}"}
    if sys.argv[2:3] == ["--tls"]:
        import ssl

        ca, cert, key = self_signed(sys.argv[3])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        registry.socket = context.wrap_socket(registry.socket, server_side=True)
        hello = {"registry": f"https://localhost:{port}", "ca": ca}
        conf = {"url": hello["registry"], "basic.auth.user.info": f"{USER}:{PASSWORD}",
                "ssl.ca.location": ca}
    threading.Thread(target=registry.serve_forever, daemon=True).start()
    client = SchemaRegistryClient(conf)
    producer = Producer({"bootstrap.servers": bootstrap})
    serializers = {}

    def serializer(schema):
        text = json.dumps(schema)
        if text not in serializers:
            serializers[text] = AvroSerializer(client, text)
        return serializers[text]

    print(json.dumps(hello), flush=True)
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
        elif cmd["cmd"] == "produce_proto":
            from confluent_kafka.schema_registry.protobuf import ProtobufSerializer

            if "proto" not in serializers:
                order_class = proto_classes()
                serializers["proto"] = (order_class, ProtobufSerializer(
                    order_class, client, {"use.deprecated.format": False}))
            order_class, serialize = serializers["proto"]
            topic = cmd["topic"]
            for i in range(cmd["first"], cmd["first"] + cmd["count"]):
                o = order_class(id=i, customer=f"c{i % 4}")
                o.tags.extend(f"t{j}" for j in range(i % 3))
                if i % 2 == 0:
                    o.item.sku = f"s{i}"
                    o.item.n = i
                o.at.seconds = 1_700_000_000 + i
                value = serialize(o, SerializationContext(topic, MessageField.VALUE))
                producer.produce(topic, value=value, partition=cmd["partition"])
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
