"""Checkpoint uploads never stall training: the background uploader and the trainer against a
real S3 protocol server (moto) behind a loopback proxy that delays or drops every request."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3proxy import FaultyProxy
from s3server import use_fake_aws_env
from tiny import tiny_config

from jepa import checkpoint as ckpt
from jepa import storage
from jepa.config import JEPAConfig
from jepa.storage import CheckpointMirror, CheckpointUploader, StorageError
from jepa.train import pretrain

# The prefix each test's mirror uses inside its bucket; the proxy counts requests by path.
PREFIX = "runs/test"


@pytest.fixture
def proxy(s3_server, s3_bucket, monkeypatch) -> Iterator[FaultyProxy]:
    """A proxy in front of the session's moto server; boto3 in this process goes through it."""
    with FaultyProxy(s3_server.endpoint_url) as proxy:
        use_fake_aws_env(monkeypatch, proxy.endpoint_url)
        yield proxy


@pytest.fixture
def quick_retries(monkeypatch) -> None:
    """upload_file's retries with a short backoff: the retry logic, without the waiting."""
    monkeypatch.setattr(storage, "UPLOAD_RETRIES", 2)
    monkeypatch.setattr(storage, "UPLOAD_BACKOFF_S", 0.05)


def write_checkpoint(path: Path, step: int) -> bytes:
    """Replace `path` atomically, as the trainer does, with bytes that name `step`."""
    data = f"checkpoint of step {step}\n".encode() * 1000
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return data


def tiny_run(data: Path, out: Path, bucket: str, **kw) -> JEPAConfig:
    """8 steps (2 epochs of 4) on 64 images, a checkpoint every 2 steps, mirrored to S3."""
    base = dict(
        root_path=str(data), output_dir=str(out), pretrain_subset=64, batch_size=16,
        epochs=2, checkpoint_every=2, checkpoint_uri=f"s3://{bucket}/{PREFIX}",
        num_workers=0, progress=False,
    )  # fmt: skip
    return tiny_config(**{**base, **kw})


# ---- the uploader ------------------------------------------------------------------------


def test_latest_wins_and_snapshots_are_stable_and_removed(proxy, s3_bucket, tmp_path) -> None:
    _, bucket = s3_bucket
    proxy.delay_s = 0.3  # each upload is 4 requests: 1.2 s
    mirror = CheckpointMirror(f"s3://{bucket}/{PREFIX}")
    uploader = CheckpointUploader(mirror, tmp_path)
    checkpoint = tmp_path / "latest.pt"
    start = time.monotonic()
    for step in range(1, 7):
        data = write_checkpoint(checkpoint, step)
        uploader.submit(checkpoint, step=step, epoch=0, config_hash="h")
    assert time.monotonic() - start < 1.0  # submit never waits for the endpoint
    uploader.wait(timeout_s=60)

    assert mirror.latest()["step"] == 6
    assert mirror.pull(tmp_path / "pulled.pt").read_bytes() == data
    # Step 1 was in flight; 2-5 were superseded while queued; 6 was uploaded last.
    assert proxy.count("PUT", f"{PREFIX}/latest.pt") == uploader.num_uploaded == 2
    assert uploader.num_superseded == 4 and uploader.num_failed == 0
    # The step-1 upload read its own snapshot, not the file that was replaced under it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "pulled.pt"]
    assert checkpoint.read_bytes() == data  # the trainer's file is only read
    uploader.close()


def test_wait_is_bounded_and_names_the_endpoint(proxy, s3_bucket, tmp_path) -> None:
    _, bucket = s3_bucket
    proxy.delay_s = 3.0
    uploader = CheckpointUploader(CheckpointMirror(f"s3://{bucket}/{PREFIX}"), tmp_path)
    write_checkpoint(tmp_path / "latest.pt", 1)
    uploader.submit(tmp_path / "latest.pt", step=1, epoch=0, config_hash="h")
    start = time.monotonic()
    with pytest.raises(StorageError, match="did not finish within 0.5s") as info:
        uploader.wait(timeout_s=0.5)
    assert time.monotonic() - start < 2.0
    assert proxy.endpoint_url in str(info.value) and "latest.pt is kept" in str(info.value)
    uploader.close()
    assert (tmp_path / "latest.pt").is_file()


# ---- the trainer -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_slow_endpoint_does_not_slow_training(
    tiny_fmnist, proxy, s3_bucket, tmp_path, caplog
) -> None:
    """At 1 s per request an upload in the training loop would add ≥ 4 s per checkpoint."""
    _, bucket = s3_bucket
    mirror = CheckpointMirror(f"s3://{bucket}/{PREFIX}")
    fast = pretrain(tiny_run(tiny_fmnist, tmp_path / "fast", bucket))
    assert mirror.latest()["step"] == 8
    puts_before = proxy.count("PUT", f"{PREFIX}/latest.pt")

    proxy.delay_s = 1.0
    start = time.monotonic()
    slow = pretrain(tiny_run(tiny_fmnist, tmp_path / "slow", bucket, lr=2e-3))
    total_s = time.monotonic() - start
    # 7 checkpoints: steps 2, 4, 6, 8 (every 2 steps), 4, 8 (each epoch's end), 8 (the end).
    num_checkpoints, per_upload_s = 7, 4 * proxy.delay_s
    assert slow["wall_time_s"] < fast["wall_time_s"] + 0.25 * num_checkpoints * per_upload_s, (
        fast["wall_time_s"],
        slow["wall_time_s"],
    )
    # The last upload was awaited: the mirror holds step 8 of this run when pretrain returns.
    assert mirror.latest()["config_hash"] == slow["config_hash"] != fast["config_hash"]
    assert mirror.latest()["step"] == 8 and total_s >= per_upload_s
    uploads = proxy.count("PUT", f"{PREFIX}/latest.pt") - puts_before
    assert 1 <= uploads < num_checkpoints  # latest wins
    assert not list((tmp_path / "slow" / "checkpoints").glob(".upload-*"))

    # Another node, no local state: it resumes from what the uploader left in the mirror.
    proxy.delay_s = 0.0
    caplog.set_level(logging.INFO, logger="jepa")
    pretrain(tiny_run(tiny_fmnist, tmp_path / "other-node", bucket, lr=2e-3))
    assert f"resuming: {mirror.uri} at step 8" in caplog.text


@pytest.mark.slow
def test_a_dead_endpoint_warns_retries_and_fails_the_run_at_the_end(
    tiny_fmnist, proxy, s3_bucket, tmp_path, caplog, quick_retries
) -> None:
    _, bucket = s3_bucket
    out = tmp_path / "run"
    cfg = tiny_run(tiny_fmnist, out, bucket, checkpoint_upload_timeout_s=60)
    caplog.set_level(logging.INFO)

    def endpoint_dies(row: dict) -> None:
        # After the start (which asks the mirror for a checkpoint to resume): the endpoint
        # answers every request by closing the connection from step 1 on.
        proxy.drop = True

    with pytest.raises(StorageError) as info:
        pretrain(cfg, loggers=[endpoint_dies])
    message = str(info.value)
    assert "last checkpoint (step 8) was not uploaded" in message
    assert proxy.endpoint_url in message and "kept" in message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint upload of step" in w and proxy.endpoint_url in w for w in warnings)
    assert any("retry 1 of 2" in w and proxy.endpoint_url in w for w in warnings)
    # Every attempt reached the endpoint: upload_file's 3 × botocore's 2 per checkpoint.
    assert proxy.count("PUT", f"{PREFIX}/latest.pt") >= 2 * 3 * storage.BOTOCORE_MAX_ATTEMPTS
    # Training finished and wrote everything; the local checkpoint is intact.
    assert ckpt.load_checkpoint(out / "checkpoints" / "latest.pt")["step"] == 8
    assert (out / "summary.json").is_file() and (out / "encoder" / "encoder.json").is_file()
    assert not list((out / "checkpoints").glob(".upload-*"))

    proxy.drop = False  # the endpoint is back: a rerun resumes at step 8 and uploads it
    caplog.clear()
    summary = pretrain(cfg)
    assert summary["steps"] == 8
    assert any(
        "resumed from" in r.getMessage() and "step 8" in r.getMessage() for r in caplog.records
    )
    assert CheckpointMirror(cfg.checkpoint_uri).latest()["step"] == 8
