"""The S3 test's independent peer: moto's S3 server on a loopback port, and boto3 (the
AWS SDK for Python) writing objects to it.

Driven over stdin, one JSON command per line; answers one JSON line each:

  {"cmd": "put", "key": k, "text": t}      an object with the text as its bytes
  {"cmd": "put", "key": k, "file": path}   an object with a local file's bytes

It first creates bucket "inbox" and prints {"endpoint": "http://127.0.0.1:PORT"}.
"""

import contextlib
import json
import logging
import sys

import boto3
from moto.server import ThreadedMotoServer


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    # moto announces itself on stdout, where only answers may go.
    with contextlib.redirect_stdout(sys.stderr):
        server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="sabot", aws_secret_access_key="sabot-secret")
    s3.create_bucket(Bucket="inbox")
    print(json.dumps({"endpoint": endpoint}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "put":
            if "file" in cmd:
                with open(cmd["file"], "rb") as f:
                    body = f.read()
            else:
                body = cmd["text"].encode()
            s3.put_object(Bucket="inbox", Key=cmd["key"], Body=body)
        print(json.dumps({"ok": True}), flush=True)
    server.stop()


if __name__ == "__main__":
    main()
