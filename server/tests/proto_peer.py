"""The Protobuf test's independent peer: Google's protobuf runtime builds the descriptor
set (shop.proto, importing google/protobuf/timestamp.proto) and serializes the messages,
and confluent-kafka produces them.

Usage: proto_peer.py BOOTSTRAP TOPIC OUT_DIR COUNT
Writes OUT_DIR/shop.pb (a FileDescriptorSet), produces COUNT shop.Order messages and two
malformed records to partition 0, and prints "done".
"""

import os
import sys

from confluent_kafka import Producer
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

F = descriptor_pb2.FieldDescriptorProto


def shop_file():
    f = descriptor_pb2.FileDescriptorProto(
        name="shop.proto", package="shop", syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"])
    status = f.enum_type.add(name="Status")
    status.value.add(name="NEW", number=0)
    status.value.add(name="PAID", number=1)
    item = f.message_type.add(name="Item")
    item.field.add(name="sku", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item.field.add(name="n", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    order = f.message_type.add(name="Order")
    scalar = [("id", 1, F.TYPE_INT64), ("customer", 2, F.TYPE_STRING),
              ("big", 3, F.TYPE_UINT64), ("delta", 9, F.TYPE_SINT32),
              ("price", 10, F.TYPE_DOUBLE), ("paid", 11, F.TYPE_BOOL),
              ("raw", 12, F.TYPE_BYTES)]
    for name, number, ty in scalar:
        order.field.add(name=name, number=number, type=ty, label=F.LABEL_OPTIONAL)
    order.field.add(name="status", number=4, type=F.TYPE_ENUM, type_name=".shop.Status",
                    label=F.LABEL_OPTIONAL)
    order.field.add(name="tags", number=5, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    order.field.add(name="item", number=6, type=F.TYPE_MESSAGE, type_name=".shop.Item",
                    label=F.LABEL_OPTIONAL)
    order.field.add(name="at", number=7, type=F.TYPE_MESSAGE,
                    type_name=".google.protobuf.Timestamp", label=F.LABEL_OPTIONAL)
    # proto3 `optional int32 qty = 8;`: a synthetic oneof gives it presence.
    order.oneof_decl.add(name="_qty")
    order.field.add(name="qty", number=8, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL,
                    proto3_optional=True, oneof_index=0)
    return f


def main():
    bootstrap, topic, out_dir, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ts_file = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts_file)
    shop = shop_file()
    descriptor_set = descriptor_pb2.FileDescriptorSet(file=[ts_file, shop])
    with open(os.path.join(out_dir, "shop.pb"), "wb") as out:
        out.write(descriptor_set.SerializeToString())

    pool = descriptor_pool.DescriptorPool()
    pool.Add(ts_file)
    pool.Add(shop)
    Order = message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Order"))

    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(count):
        o = Order(id=i, customer=f"c{i % 4}", big=2**63 + i, status=i % 2, delta=-i,
                  price=i * 0.5, paid=i % 2 == 1, raw=bytes([i % 256]))
        o.tags.extend(f"t{j}" for j in range(i % 3))
        if i % 5 == 0:
            o.item.sku = f"s{i}"
            o.item.n = i
        o.at.seconds = 1_700_000_000 + i
        o.at.nanos = 500_000_000
        if i % 2 == 0:
            o.qty = i
        producer.produce(topic, value=o.SerializeToString(), partition=0)
    # Malformed: a field with wire type 7, and a length running past the end.
    producer.produce(topic, value=b"\x0f\x01", partition=0)
    producer.produce(topic, value=b"\x12\x09ab", partition=0)
    producer.flush(30)
    print("done", flush=True)


if __name__ == "__main__":
    main()
