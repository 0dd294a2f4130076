"""An S3-compatible server on loopback, for the tests of team state in a bucket.

The server is moto's (`moto[server]`, a pip package from requirements-dev.txt): it speaks the
S3 API that Pulumi's `s3://` backend uses (objects, listings, deletes), so the tests need no
container image and no MinIO download. MinIO serves the same API for users who run it.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import boto3  # type: ignore[import-untyped]
from moto.server import ThreadedMotoServer

# moto takes any key pair; the AWS SDKs (Pulumi's and boto3) need one to sign requests with.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "nexus-tests", "AWS_SECRET_ACCESS_KEY": "nexus-tests-secret"}
REGION = "us-east-1"


@dataclass(frozen=True)
class Bucket:
    name: str
    endpoint: str  # http://127.0.0.1:<port>
    client: Any  # boto3's S3 client (boto3 ships no type hints)

    def backend_url(self) -> str:
        """Pulumi's backend in this bucket, in the README's form: the server's endpoint, the
        bucket in the path (not in the host name) and a region to sign for."""
        query = urlencode({"endpoint": self.endpoint, "s3ForcePathStyle": "true", "region": REGION})
        return f"s3://{self.name}?{query}"

    def keys(self, prefix: str = "") -> list[str]:
        listing = self.client.list_objects_v2(Bucket=self.name, Prefix=prefix)
        return [str(item["Key"]) for item in listing.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return bytes(self.client.get_object(Bucket=self.name, Key=key)["Body"].read())


@contextmanager
def s3_bucket(name: str) -> Iterator[Bucket]:
    """A new, empty bucket `name` on a moto S3 server of its own, until the block ends."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)  # else a log line per request fills every failure report
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        # moto keeps its buckets in this process, not per server: start from none.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=name)
        yield Bucket(name, endpoint, client)
    finally:
        server.stop()
        werkzeug.setLevel(level)
