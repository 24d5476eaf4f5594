"""Credentials never leak: with recognisable fake AWS credentials in the environment, the
Prefect flow (pretraining with its checkpoint mirrored to S3, then `dvc push`), `dvc pull`
into a clone, and uploads that fail (a dead endpoint during training, rejected credentials)
leave them in no log line, error message, metrics file, dvclive output, S3 object or
Prefect log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from s3proxy import FaultyProxy
from s3server import iam_authentication, use_fake_aws_env
from test_checkpoint_upload import quick_retries, tiny_run  # noqa: F401 (a fixture)
from test_flows import prefect_api, task_runs, tiny_overrides  # noqa: F401 (a fixture)
from test_pipeline import git, make_repo, run

from jepa.storage import CheckpointMirror, StorageError, run_dvc, upload_file
from jepa.train import pretrain

# Shaped like real ones (an access key is AKIA + 16 characters), unique enough to grep for.
ACCESS_KEY = "AKIA7LEAKCHECK9Q2W5"
SECRET_KEY = "leakcheck+SecretMarker/9f3c1e7a2b5d8046c1e9a7b3f2d4LEAK"
SESSION_TOKEN = "FwoGZXIvYXdzLEAKCHECKTOKENMARKER0123456789abcdef"
SECRETS = (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN)


def leaks(text: str | bytes) -> list[str]:
    """The secrets (or the distinctive parts of them) found in `text`."""
    data = text.encode() if isinstance(text, str) else text
    probes = (*SECRETS, "LEAKCHECK", "SecretMarker")
    return [p for p in probes if p.encode() in data]


def files_under(root: Path, skip: tuple[str, ...] = (".git",)) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not set(p.parts) & set(skip)]


def assert_no_leak_in_files(root: Path) -> int:
    """Every file under `root` (but .git) is free of the secrets; how many were read."""
    paths = files_under(root)
    for path in paths:
        assert not leaks(path.read_bytes()), path
    return len(paths)


@pytest.fixture
def marked_credentials(s3_server, s3_bucket, monkeypatch) -> str:
    """The fake credentials with markers in the environment (moto accepts any key)."""
    use_fake_aws_env(monkeypatch, s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    return s3_bucket[1]


@pytest.mark.slow
def test_the_flow_push_and_pull_never_show_the_credentials(
    prefect_api,  # noqa: F811
    marked_credentials: str,
    s3_server,
    tiny_fmnist: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    from flows.pipeline import jepa_pipeline

    bucket = marked_credentials
    caplog.set_level(logging.INFO)
    repo = make_repo(tmp_path / "repo", ["debug=tiny", f"root_path={tiny_fmnist}"])
    state = jepa_pipeline(
        overrides={**tiny_overrides(tiny_fmnist), "run_store": str(tmp_path / "runs")},
        repo_dir=str(repo),
        checkpoint_uri=f"s3://{bucket}/checkpoints",
        dvc_remote_url=f"s3://{bucket}/dvc",
        push=True,
        until="pretrain",
        return_state=True,
    )
    assert state.is_completed(), state.message
    out = state.result()
    stage_output = "\n".join(r.stdout + r.stderr for r in out["stages"].values())
    assert "pretrain" in stage_output and not leaks(stage_output)

    # Prefect's logs of the flow run and all its tasks, as the API stores them.
    APILogHandler().flush()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    prefect_log = "\n".join(entry.message for entry in logs)
    assert "dvc push" in prefect_log and set(task_runs(flow_run_id)) >= {"pretrain", "push"}
    assert not leaks(prefect_log)

    # What S3 holds: the mirrored checkpoint and its record, the DVC remote's objects.
    s3 = s3_server.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert "checkpoints/latest.json" in keys and any(k.startswith("dvc/") for k in keys)
    for key in keys:
        assert not leaks(s3.get_object(Bucket=bucket, Key=key)["Body"].read()), key

    # `dvc pull` into a fresh clone.
    clone = tmp_path / "clone"
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "pretrained")
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run_dvc(["remote", "add", "--local", "-d", "flow", f"s3://{bucket}/dvc"], cwd=clone)
    run_dvc(
        ["remote", "modify", "--local", "flow", "endpointurl", s3_server.endpoint_url], cwd=clone
    )
    pulled = run_dvc(["pull", "pretrain"], cwd=clone)
    assert (clone / "pretrain" / "encoder" / "encoder.safetensors").is_file()
    assert not leaks(pulled.stdout + pulled.stderr)

    # Every file the run wrote: params, metrics, dvclive, summary, dvc's own state and logs.
    assert (repo / "pretrain" / "dvclive" / "metrics.json").is_file()
    assert assert_no_leak_in_files(repo) > 20
    assert_no_leak_in_files(clone)
    assert_no_leak_in_files(tmp_path / "runs")  # empty once finished, but checked
    assert not leaks(caplog.text)


@pytest.mark.slow
def test_failed_uploads_never_show_the_credentials(
    marked_credentials: str,
    s3_server,
    tiny_fmnist: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    quick_retries,  # noqa: F811
) -> None:
    bucket = marked_credentials
    caplog.set_level(logging.INFO)
    with FaultyProxy(s3_server.endpoint_url) as proxy:
        cfg = tiny_run(tiny_fmnist, tmp_path / "run", bucket, checkpoint_upload_timeout_s=60)
        cfg = cfg.replace(checkpoint_uri=f"{cfg.checkpoint_uri}-leak")
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)

        def endpoint_dies(row: dict) -> None:
            proxy.drop = True

        with pytest.raises(StorageError) as dead:
            pretrain(cfg, loggers=[endpoint_dies])
    assert "was not uploaded" in str(dead.value) and not leaks(str(dead.value))
    assert "retry 1 of 2" in caplog.text and not leaks(caplog.text)
    assert_no_leak_in_files(tmp_path / "run")

    # The endpoint rejects the marked key (moto's IAM checks on): a 403, reported in words.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)  # moto itself again
    local = tmp_path / "run" / "checkpoints" / "latest.pt"
    with iam_authentication(s3_server, bucket):
        with pytest.raises(StorageError, match="rejected the credentials") as rejected:
            upload_file(local, f"s3://{bucket}/leak/latest.pt")
        with pytest.raises(StorageError, match="rejected the credentials") as pushed:
            CheckpointMirror(f"s3://{bucket}/leak").push(local, step=8, epoch=2, config_hash="x")
    for error in (rejected.value, pushed.value):
        assert "AWS_SECRET_ACCESS_KEY" in str(error)  # names the variable, not its value
        assert not leaks(str(error)) and not leaks(repr(error.__cause__))
    assert not leaks(caplog.text)
