"""A real S3 protocol server on loopback for tests (moto's threaded server).

The server runs in a thread of the test process but speaks HTTP on 127.0.0.1, so boto3 in
the tests and a `dvc` subprocess talk to it exactly as they would to S3. Port 0 lets the OS
choose a free port; `ThreadedMotoServer.get_host_and_port()` reads the bound port back from
the werkzeug server after `start()`.

Credentials: moto accepts any access key and does not check request signatures unless IAM
authentication is switched on (`moto.core.authorization.enable_iam_authentication`); see
`iam_authentication` below.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import boto3
import pytest
from moto.core.authorization import enable_iam_authentication
from moto.server import ThreadedMotoServer

FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Loopback must never go through a proxy that the CI machine may set.
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
# Variables that would make boto3 or dvc pick up something other than FAKE_ENV.
CLEARED_ENV = (
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL_S3",
    "JEPA_S3_ENDPOINT_URL",
)


def use_fake_aws_env(monkeypatch: pytest.MonkeyPatch, endpoint_url: str) -> None:
    """Point boto3 and child processes (dvc) at `endpoint_url` with fake credentials."""
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint_url)
    # A developer's ~/.aws files must not leak into the tests.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")


@dataclass
class S3Server:
    """A started moto server: `endpoint_url` is `http://127.0.0.1:<port>`."""

    server: ThreadedMotoServer
    endpoint_url: str

    def client(self, **kwargs):
        """A plain boto3 S3 client for this server (test setup, not the code under test)."""
        session = boto3.session.Session()
        return session.client("s3", endpoint_url=self.endpoint_url, **kwargs)

    def create_bucket(self) -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


@contextlib.contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """Start moto on 127.0.0.1 with an OS-chosen port; stop it on exit."""
    # werkzeug logs every request to stderr; keep test output for failures.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(server=server, endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


def closed_port_url() -> str:
    """An http URL on loopback where nothing listens (bind port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def iam_authentication(s3: S3Server, bucket: str) -> Iterator[tuple[str, str]]:
    """Switch on moto's signature and IAM checks; yield a valid (access key, secret).

    The key belongs to an IAM user allowed `s3:*` on `bucket`, created before the checks
    start. Any other key is rejected (InvalidAccessKeyId) and a wrong secret fails the
    signature check (SignatureDoesNotMatch). The previous mode is restored on exit.
    """
    iam = boto3.session.Session().client("iam", endpoint_url=s3.endpoint_url)
    user = f"user-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    policy = (
        '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",'
        f' "Resource": ["arn:aws:s3:::{bucket}", "arn:aws:s3:::{bucket}/*"]}}]}}'
    )
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=policy)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    with enable_iam_authentication():
        yield key["AccessKeyId"], key["SecretAccessKey"]
