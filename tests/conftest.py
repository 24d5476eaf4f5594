"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from s3server import S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 (OS-chosen port) for the whole session."""
    from s3server import running_s3_server  # moto is slow to import; only S3 tests pay

    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A fresh bucket; fake credentials and AWS_ENDPOINT_URL set for boto3 and dvc."""
    from s3server import use_fake_aws_env

    use_fake_aws_env(monkeypatch, s3_server.endpoint_url)
    return s3_server.endpoint_url, s3_server.create_bucket()


@pytest.fixture(scope="session")
def tiny_fmnist(tmp_path_factory: pytest.TempPathFactory):
    """Root of a tiny Fashion-MNIST (128 train, 64 test images) in the real IDX format."""
    from fmnist_data import write_tiny_fmnist

    return write_tiny_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture(autouse=True, scope="session")
def _private_run_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The pipeline's default run store (`$XDG_CACHE_HOME/jepa/runs`) in a temp folder, for
    this process and the tools it starts, so tests never leave training state in ~/.cache."""
    import os

    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if saved is None:
        os.environ.pop("XDG_CACHE_HOME")
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(autouse=True, scope="session")
def _no_dvc_analytics() -> Iterator[None]:
    """Every `dvc` command a test runs would start DVC's usage-report daemon, which, with no
    network to send to, leaves a report file in /tmp per command (about 90 per suite)."""
    import os

    saved = os.environ.get("DVC_NO_ANALYTICS")
    os.environ["DVC_NO_ANALYTICS"] = "1"
    yield
    if saved is None:
        os.environ.pop("DVC_NO_ANALYTICS")
    else:
        os.environ["DVC_NO_ANALYTICS"] = saved
