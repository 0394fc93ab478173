"""A real S3 endpoint for the tests: moto in server mode (``moto[server]``, the S3 REST API over
HTTP on 127.0.0.1), one per test session, a fresh bucket per test. Without moto the tests that
need it are skipped on a user's machine and fail under CI."""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.samples import IN_CI

ACCESS_KEY = "testing-key"
SECRET_KEY = "testing-secret"
REGION = "us-east-1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoS3:
    """moto's S3 in threads of this process, on its own port; :meth:`stop` and :meth:`start`
    again on the same port keep the buckets (moto's state lives in this process)."""

    def __init__(self) -> None:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # moto or its server extras (flask) missing
            message = f"moto[server] is not installed ({exc}): pip install 'moto[server]'"
            if IN_CI:
                pytest.fail(message)
            pytest.skip(message)
        self._server_class = ThreadedMotoServer
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self._server = self._server_class(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def store_toml(self, bucket: str, prefix: str = "archive", credentials: bool = True) -> str:
        """The ``[storage.s3]`` table of a server configuration for ``bucket``; without
        ``credentials`` the server takes them from the AWS environment variables."""
        keys = f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n' if credentials else ""
        return (f'[storage.s3]\nbucket = "{bucket}"\nprefix = "{prefix}"\nendpoint_url = "{self.endpoint}"\n'
                f'region = "{REGION}"\n{keys}')


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def delete_bucket(client: Any, bucket: str) -> None:
    """Empty ``bucket`` (objects and incomplete uploads), then remove it."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)
