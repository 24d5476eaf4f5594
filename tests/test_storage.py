"""jepa.storage against a real S3 protocol server (moto on loopback) and the real dvc CLI.

Failures are injected with botocore event hooks on the client under test, so the request
path (transfer manager, signing, retries, verification) is the real one.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError
from s3server import closed_port_url, iam_authentication, use_fake_aws_env

from jepa.storage import (
    BOTOCORE_MAX_ATTEMPTS,
    MIN_PART_SIZE,
    CheckpointMirror,
    StorageError,
    download_file,
    dvc_executable,
    exists,
    parse_s3_uri,
    run_dvc,
    s3_client,
    upload_file,
)

DVC = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "dvc"


def _write(path: Path, size: int, seed: int = 0) -> bytes:
    data = os.urandom(size) if seed == 0 else bytes((i * seed) % 251 for i in range(size))
    path.write_bytes(data)
    return data


def _snapshot(path: Path) -> tuple[bytes, int, int]:
    """Bytes, size and mtime: everything a failed upload must leave alone."""
    stat = path.stat()
    return path.read_bytes(), stat.st_size, stat.st_mtime_ns


class _FailingSends:
    """before-send hook: the first `failures` sends of an operation fail, then pass through."""

    def __init__(self, failures: int, kind: str = "connection") -> None:
        self.failures, self.kind, self.calls = failures, kind, 0

    def __call__(self, request, **kwargs):
        self.calls += 1
        if self.calls > self.failures:
            return None  # send the real request
        if self.kind == "connection":
            raise EndpointConnectionError(endpoint_url=request.url)
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your rate</Message></Error>"
        return AWSResponse(request.url, 503, {}, _Raw(body))


class _Raw:
    """Minimal urllib3-like body for a canned AWSResponse."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self):
        yield self.body


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://bucket/a/b.pt") == ("bucket", "a/b.pt")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ["bucket/key", "s3:/bucket/key", "s3:///key", "https://bucket/key", "s3://b/k"]:
        with pytest.raises(ValueError, match="S3 URI"):
            parse_s3_uri(bad)


def test_client_endpoint_from_env(s3_bucket, monkeypatch) -> None:
    endpoint, _ = s3_bucket
    assert s3_client().meta.endpoint_url == endpoint
    monkeypatch.setenv("JEPA_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    assert s3_client().meta.endpoint_url == "http://127.0.0.1:9"
    assert s3_client("http://127.0.0.1:8").meta.endpoint_url == "http://127.0.0.1:8"
    monkeypatch.setenv("JEPA_S3_ENDPOINT_URL", "127.0.0.1:9")
    with pytest.raises(ValueError, match="JEPA_S3_ENDPOINT_URL"):
        s3_client()


def test_round_trip_and_verification(s3_bucket, tmp_path) -> None:
    endpoint, bucket = s3_bucket
    data = _write(tmp_path / "ckpt.bin", 300_000)
    uri = f"s3://{bucket}/run/ckpt.bin"
    assert not exists(uri)
    upload_file(tmp_path / "ckpt.bin", uri)
    assert exists(uri)

    head = s3_client().head_object(Bucket=bucket, Key="run/ckpt.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"') == hashlib.md5(data).hexdigest()

    out = download_file(uri, tmp_path / "sub" / "back.bin")
    assert out.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["back.bin"]  # no temp files left


def test_multipart_upload_verifies_size(s3_bucket, tmp_path) -> None:
    _, bucket = s3_bucket
    data = _write(tmp_path / "big.bin", MIN_PART_SIZE + 1024, seed=7)
    uri = f"s3://{bucket}/big.bin"
    upload_file(tmp_path / "big.bin", uri, multipart_threshold=MIN_PART_SIZE)
    etag = s3_client().head_object(Bucket=bucket, Key="big.bin")["ETag"].strip('"')
    assert etag.endswith("-2")  # really multipart, so only the size could be verified
    assert download_file(uri, tmp_path / "back.bin").read_bytes() == data


def test_etag_mismatch_is_retried_then_reported(s3_bucket, tmp_path) -> None:
    _, bucket = s3_bucket
    local = tmp_path / "ckpt.bin"
    _write(local, 10_000)
    before = _snapshot(local)
    client = s3_client()
    puts = _FailingSends(failures=0)
    client.meta.events.register("before-send.s3.PutObject", puts)
    heads = {"n": 0, "corrupt": 1}

    def corrupt_etag(parsed, **kwargs):
        # As if the server stored other bytes than were sent.
        heads["n"] += 1
        if heads["n"] <= heads["corrupt"]:
            parsed["ETag"] = '"00000000000000000000000000000000"'

    client.meta.events.register("after-call.s3.HeadObject", corrupt_etag)
    upload_file(local, f"s3://{bucket}/ckpt.bin", client=client, backoff=0.01)
    assert puts.calls == 2  # re-uploaded once after the bad ETag

    heads.update(n=0, corrupt=10)
    with pytest.raises(StorageError, match="did not verify.*ETag"):
        upload_file(local, f"s3://{bucket}/ckpt.bin", client=client, retries=2, backoff=0.01)
    assert _snapshot(local) == before


@pytest.mark.parametrize("kind", ["connection", "503"])
def test_upload_retries_transient_errors(s3_bucket, tmp_path, kind) -> None:
    _, bucket = s3_bucket
    data = _write(tmp_path / "ckpt.bin", 50_000)
    client = s3_client()
    # More failures than botocore's own attempts, so upload_file's loop must retry too.
    hook = _FailingSends(failures=2 * BOTOCORE_MAX_ATTEMPTS, kind=kind)
    client.meta.events.register("before-send.s3.PutObject", hook)
    upload_file(tmp_path / "ckpt.bin", f"s3://{bucket}/ckpt.bin", client=client, backoff=0.01)
    assert hook.calls == 2 * BOTOCORE_MAX_ATTEMPTS + 1
    body = s3_client().get_object(Bucket=bucket, Key="ckpt.bin")["Body"].read()
    assert body == data


def test_failed_upload_keeps_local_file(s3_bucket, tmp_path) -> None:
    _, bucket = s3_bucket
    local = tmp_path / "ckpt.bin"
    _write(local, 20_000)
    before = _snapshot(local)
    client = s3_client()
    hook = _FailingSends(failures=10**6)
    client.meta.events.register("before-send.s3.PutObject", hook)
    with pytest.raises(StorageError, match="cannot reach S3 endpoint"):
        upload_file(local, f"s3://{bucket}/ckpt.bin", client=client, retries=2, backoff=0.01)
    assert hook.calls == 3 * BOTOCORE_MAX_ATTEMPTS
    assert _snapshot(local) == before
    assert not exists(f"s3://{bucket}/ckpt.bin")


def test_missing_bucket_is_clear_and_not_retried(s3_bucket, tmp_path) -> None:
    local = tmp_path / "ckpt.bin"
    _write(local, 1000)
    before = _snapshot(local)
    client = s3_client()
    puts = _FailingSends(failures=0)
    client.meta.events.register("before-send.s3.PutObject", puts)
    uri = "s3://no-such-bucket-jepa/ckpt.bin"
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-jepa' does not exist"):
        upload_file(local, uri, client=client, backoff=0.01)
    assert puts.calls == 1
    assert _snapshot(local) == before
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-jepa' does not exist"):
        exists(uri, client=client)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-jepa' does not exist"):
        CheckpointMirror("s3://no-such-bucket-jepa/run").latest()


def test_wrong_credentials(s3_server, s3_bucket, tmp_path, monkeypatch) -> None:
    """moto accepts any key by default; with its IAM checks on, bad keys get a real 403."""
    _, bucket = s3_bucket
    local = tmp_path / "ckpt.bin"
    _write(local, 1000)
    before = _snapshot(local)
    uri = f"s3://{bucket}/ckpt.bin"
    with iam_authentication(s3_server, bucket) as (access_key, secret_key):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
        upload_file(local, uri)  # the valid key works: the checks below are about the key
        for bad_key, bad_secret, code in [
            (access_key, "wrong-secret", "SignatureDoesNotMatch"),
            ("AKIAUNKNOWNKEY000000", secret_key, "InvalidAccessKeyId"),
        ]:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", bad_key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
            client = s3_client()
            puts = _FailingSends(failures=0)
            client.meta.events.register("before-send.s3.PutObject", puts)
            with pytest.raises(StorageError, match=f"rejected the credentials.*{code}") as info:
                upload_file(local, uri, client=client, backoff=0.01)
            assert "AWS_SECRET_ACCESS_KEY" in str(info.value)
            assert puts.calls == 1  # a 403 is not retried
            with pytest.raises(StorageError, match="rejected the credentials"):
                exists(uri, client=client)
    assert _snapshot(local) == before


def test_unreachable_endpoint_fails_fast(s3_bucket, tmp_path) -> None:
    local = tmp_path / "ckpt.bin"
    _write(local, 1000)
    before = _snapshot(local)
    endpoint = closed_port_url()
    client = s3_client(endpoint)
    for call in [
        lambda: exists("s3://bucket/ckpt.bin", client=client),
        lambda: upload_file(local, "s3://bucket/ckpt.bin", client=client, retries=1, backoff=0.1),
        lambda: CheckpointMirror("s3://bucket/run", client=client).pull(tmp_path / "out"),
    ]:
        start = time.monotonic()
        with pytest.raises(StorageError) as info:
            call()
        assert time.monotonic() - start < 6
        assert endpoint in str(info.value) and "AWS_ENDPOINT_URL" in str(info.value)
    assert _snapshot(local) == before


def test_mirror_push_latest_pull(s3_bucket, tmp_path) -> None:
    _, bucket = s3_bucket
    mirror = CheckpointMirror(f"s3://{bucket}/runs/exp1/")
    assert mirror.latest() is None
    assert mirror.pull(tmp_path / "out") is None

    order: list[str] = []
    mirror.client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **kw: order.append(request.url.rsplit("/")[-1])
    )
    data = _write(tmp_path / "step10.pt", 40_000)
    mirror.push(tmp_path / "step10.pt", step=10, epoch=1, config_hash="abc123")
    assert order == ["latest.pt", "latest.json"]  # the pointer is written last
    assert mirror.latest() == {
        "step": 10,
        "epoch": 1,
        "config_hash": "abc123",
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    assert exists(f"s3://{bucket}/runs/exp1/latest.pt")

    # A fresh mirror object, as on another node after a restart.
    other = CheckpointMirror(f"s3://{bucket}/runs/exp1")
    (tmp_path / "node2").mkdir()
    assert other.pull(tmp_path / "node2") == tmp_path / "node2" / "latest.pt"
    assert (tmp_path / "node2" / "latest.pt").read_bytes() == data

    data2 = _write(tmp_path / "step20.pt", 41_000)
    mirror.push(tmp_path / "step20.pt", step=20, epoch=2, config_hash="abc123")
    assert other.latest()["step"] == 20
    assert other.pull(tmp_path / "resume.pt").read_bytes() == data2
    with pytest.raises(ValueError, match="step"):
        mirror.push(tmp_path / "step20.pt", step=-1, epoch=2, config_hash="abc123")


def test_pull_rejects_tampered_checkpoint(s3_server, s3_bucket, tmp_path) -> None:
    _, bucket = s3_bucket
    mirror = CheckpointMirror(f"s3://{bucket}/run")
    _write(tmp_path / "ckpt.pt", 10_000)
    mirror.push(tmp_path / "ckpt.pt", step=5, epoch=0, config_hash="h")
    s3_server.client().put_object(Bucket=bucket, Key="run/latest.pt", Body=b"tampered")

    dest_dir = tmp_path / "node2"
    dest_dir.mkdir()
    (dest_dir / "latest.pt").write_bytes(b"previous good checkpoint")
    with pytest.raises(StorageError, match="sha256"):
        mirror.pull(dest_dir / "latest.pt")
    assert (dest_dir / "latest.pt").read_bytes() == b"previous good checkpoint"
    assert [p.name for p in dest_dir.iterdir()] == ["latest.pt"]  # temp file removed


# --- the real dvc CLI against the same server -------------------------------------------


def test_dvc_executable_prefers_the_interpreters_own(tmp_path, monkeypatch) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    with pytest.raises(StorageError, match=r"dvc not found.*install dvc\[s3\]"):
        dvc_executable()
    (bin_dir / "dvc").write_text("#!/bin/sh\n")
    assert dvc_executable() == str(bin_dir / "dvc")


def _dvc_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, bytes]:
    """A git + dvc repo in tmp_path with one tracked file; dvc kept off global state."""
    if not DVC.is_file() or shutil.which("git") is None:
        pytest.skip(f"needs git and {DVC}")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(tmp_path / "dvc-global"))
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    run_dvc(["init", "-q"], cwd=repo)
    data = _write(repo / "data.bin", 30_000)
    run_dvc(["add", "-q", "data.bin"], cwd=repo)
    return repo, data


@pytest.mark.slow
def test_dvc_push_pull_and_unreachable_remote(s3_bucket, tmp_path, monkeypatch) -> None:
    endpoint, bucket = s3_bucket
    repo, data = _dvc_repo(tmp_path, monkeypatch)
    run_dvc(["remote", "add", "-d", "s3remote", f"s3://{bucket}/dvcstore"], cwd=repo)
    run_dvc(["remote", "modify", "s3remote", "endpointurl", endpoint], cwd=repo)
    assert "1 file pushed" in run_dvc(["push"], cwd=repo).stdout
    md5 = hashlib.md5(data).hexdigest()
    assert exists(f"s3://{bucket}/dvcstore/files/md5/{md5[:2]}/{md5[2:]}")

    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / "data.bin").unlink()
    run_dvc(["pull"], cwd=repo)
    assert (repo / "data.bin").read_bytes() == data

    # Same repo, new data, remote moved to a port where nothing listens.
    unreachable = closed_port_url()
    use_fake_aws_env(monkeypatch, unreachable)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # dvc's botocore would back off for ~8 s
    _write(repo / "data.bin", 1000)
    run_dvc(["add", "-q", "data.bin"], cwd=repo)
    run_dvc(["remote", "modify", "s3remote", "endpointurl", unreachable], cwd=repo)
    with pytest.raises(StorageError, match="Could not connect to the endpoint URL") as info:
        run_dvc(["push"], cwd=repo)
    assert unreachable in str(info.value)
    # dvc itself reports the failure in its exit code (255 in dvc 3.67), not only in stderr.
    assert re.search(r"exit code [1-9]", str(info.value))
