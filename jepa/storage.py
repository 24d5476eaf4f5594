"""S3 storage: mirror the latest training checkpoint so a job restarted elsewhere resumes.

`CheckpointMirror` keeps two objects under `s3://bucket/prefix`: `latest.pt` (the checkpoint)
and `latest.json` (step, epoch, config hash, sha256 of the checkpoint). The json is uploaded
last, so a reader that sees it also sees a complete `latest.pt`; `pull` checks the sha256
before replacing anything locally.

Endpoint: the `endpoint_url` argument, else `JEPA_S3_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`,
`AWS_ENDPOINT_URL` (in that order), else AWS itself. Credentials come only from the usual AWS
chain (env vars, `AWS_PROFILE` / `~/.aws`, instance roles); nothing here accepts keys.

`CheckpointUploader` pushes the trainer's checkpoints to a mirror on a background thread,
latest wins, so a slow or failing endpoint never stalls training.

Every failure surfaces as `StorageError` with a message that names the endpoint, the URI and
what to check; no message or log line carries a credential. `run_dvc` runs the `dvc` CLI with the same contract; `dvc_executable` is the
one way the project finds that CLI (a missing dvc is a `StorageError` too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from s3transfer.exceptions import RetriesExceededError

from jepa.io import atomic_write

log = logging.getLogger(__name__)

ENDPOINT_ENV_VARS = ("JEPA_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 30.0
# botocore's own attempts per request (standard mode); upload_file retries on top of this.
BOTOCORE_MAX_ATTEMPTS = 2
MIN_PART_SIZE = 5 * 1024**2  # S3 rejects multipart parts below 5 MiB (except the last)
MULTIPART_THRESHOLD = 64 * 1024**2
# upload_file's own attempts on top of botocore's: `UPLOAD_RETRIES` more after the first,
# the n-th after `UPLOAD_BACKOFF_S * 2**n` seconds (read at call time, so tests may shorten it).
UPLOAD_RETRIES = 4
UPLOAD_BACKOFF_S = 0.5

_TRANSIENT_CODES = {
    "InternalError",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
}
_CREDENTIAL_CODES = {
    "403",
    "AccessDenied",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
}
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_S3_ERRORS = (BotoCoreError, ClientError, RetriesExceededError)
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_DVC_FAILURE_RE = re.compile(
    r"^ERROR\b|failed to (push|pull|fetch|transfer|upload|download)|\d+ files? failed",
    re.IGNORECASE | re.MULTILINE,
)


class StorageError(RuntimeError):
    """An S3 or dvc operation failed; the message says what to check."""


class _VerificationError(Exception):
    """The uploaded object does not match the local file (size or ETag)."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split `s3://bucket/key/prefix` into `("bucket", "key/prefix")` (key may be "")."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI: {uri!r}; expected s3://bucket/prefix")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError(
            f"bad bucket name {bucket!r} in S3 URI {uri!r}; expected s3://bucket/prefix"
        )
    return bucket, key


def resolve_endpoint_url(endpoint_url: str | None = None) -> str | None:
    """The endpoint to use: the argument, else the first set of ENDPOINT_ENV_VARS, else None."""
    source = "endpoint_url"
    if endpoint_url is None:
        for name in ENDPOINT_ENV_VARS:
            if os.environ.get(name):
                source, endpoint_url = name, os.environ[name]
                break
    if endpoint_url is not None and not endpoint_url.startswith(("http://", "https://")):
        raise ValueError(f"{source}={endpoint_url!r} is not an http(s) URL, e.g. http://host:9000")
    return endpoint_url


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client with short timeouts and bounded retries (fails in seconds if down)."""
    config = Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": BOTOCORE_MAX_ATTEMPTS},
    )
    endpoint_url = resolve_endpoint_url(endpoint_url)
    try:
        # A fresh session per client: the default session caches credentials from first use.
        return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
    except ProfileNotFound as exc:
        raise StorageError(f"{exc}: fix AWS_PROFILE or add the profile to ~/.aws") from exc


def upload_file(
    local: Path,
    uri: str,
    *,
    client: Any = None,
    retries: int | None = None,
    backoff: float | None = None,
    multipart_threshold: int = MULTIPART_THRESHOLD,
) -> None:
    """Upload `local` to the object `uri`, verify it, and retry transient failures.

    Retries `retries` times (default `UPLOAD_RETRIES`), after `backoff * 2**attempt` seconds
    (default `UPLOAD_BACKOFF_S`), on connection errors, 5xx, throttling and a failed
    verification; never on 4xx such as bad credentials or a missing bucket. Each retry logs a
    warning naming the endpoint. The local file is only read, never moved or deleted.
    """
    retries = UPLOAD_RETRIES if retries is None else retries
    backoff = UPLOAD_BACKOFF_S if backoff is None else backoff
    local = Path(local)
    bucket, key = _object_location(uri)
    if not local.is_file():
        raise FileNotFoundError(f"cannot upload {local} to {uri}: no such file")
    if multipart_threshold < MIN_PART_SIZE:
        raise ValueError(f"multipart_threshold={multipart_threshold} is below S3's 5 MiB part size")
    client = client if client is not None else s3_client()
    size = local.stat().st_size
    single_part = size < multipart_threshold
    md5 = _file_digest(local, "md5") if single_part else None
    config = TransferConfig(
        multipart_threshold=multipart_threshold, multipart_chunksize=multipart_threshold
    )
    for attempt in range(retries + 1):
        try:
            with create_transfer_manager(client, config) as manager:
                manager.upload(str(local), bucket, key).result()
            _verify_upload(client, bucket, key, size, md5)
            return
        except (*_S3_ERRORS, _VerificationError) as exc:
            if attempt == retries or not _is_transient(exc):
                raise _storage_error(exc, client, f"uploading {local} to", uri) from exc
            delay = backoff * 2**attempt
            log.warning(
                "upload of %s to %s at S3 endpoint %s failed (%s); retry %d of %d in %.1fs",
                local, uri, client.meta.endpoint_url, exc, attempt + 1, retries, delay,
            )  # fmt: skip
            time.sleep(delay)


def _verify_upload(client: Any, bucket: str, key: str, size: int, md5: str | None) -> None:
    """Compare the stored object with the local file's size and (single-part) md5."""
    head = client.head_object(Bucket=bucket, Key=key)
    if head["ContentLength"] != size:
        raise _VerificationError(f"stored size {head['ContentLength']} != local size {size}")
    # A multipart ETag is md5-of-part-md5s plus "-<parts>", and an SSE-KMS / SSE-C ETag is
    # not an md5 at all: for those the size is all we can verify without downloading.
    etag = head["ETag"].strip('"')
    encrypted = head.get("ServerSideEncryption") == "aws:kms" or "SSECustomerAlgorithm" in head
    if md5 is not None and "-" not in etag and not encrypted and etag != md5:
        raise _VerificationError(f"stored ETag {etag} != local md5 {md5}")


def download_file(uri: str, local: Path, *, client: Any = None) -> Path:
    """Download the object `uri` to `local` atomically (`jepa.io.atomic_write`); return it."""
    _object_location(uri)
    client = client if client is not None else s3_client()
    return atomic_write(local, lambda tmp: _download(client, uri, tmp))


def _download(client: Any, uri: str, dest: Path) -> None:
    """Write the object `uri` into the file `dest` (a temporary file of `atomic_write`)."""
    bucket, key = _object_location(uri)
    try:
        with open(dest, "wb") as f:
            client.download_fileobj(bucket, key, f)
    except _S3_ERRORS as exc:
        raise _storage_error(exc, client, "downloading", uri) from exc


def exists(uri: str, *, client: Any = None) -> bool:
    """Whether the object `uri` exists; a missing bucket is an error, not False."""
    bucket, key = _object_location(uri)
    client = client if client is not None else s3_client()
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if _error_code(exc) in _NOT_FOUND_CODES and _bucket_exists(client, bucket):
            return False
        raise _storage_error(exc, client, "checking", uri) from exc
    except BotoCoreError as exc:
        raise _storage_error(exc, client, "checking", uri) from exc


class CheckpointMirror:
    """Mirror of the latest checkpoint under s3://bucket/prefix.

    Objects: `latest.pt` and `latest.json` ({step, epoch, config_hash, sha256, size}). Two
    writers pushing at once, or a push during a pull, can make `pull` see a sha256 mismatch;
    that raises StorageError and the caller retries, it never yields a wrong checkpoint.
    """

    def __init__(self, uri: str, *, client: Any = None) -> None:
        bucket, prefix = parse_s3_uri(uri)
        prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.checkpoint_uri = f"{self.uri}/latest.pt"
        self.metadata_uri = f"{self.uri}/latest.json"
        self._client = client

    @property
    def client(self) -> Any:
        """The S3 client, created on first use."""
        if self._client is None:
            self._client = s3_client()
        return self._client

    @property
    def endpoint_url(self) -> str:
        return self.client.meta.endpoint_url

    def push(self, checkpoint_path: Path, *, step: int, epoch: int, config_hash: str) -> None:
        """Upload `checkpoint_path` as latest.pt, then latest.json describing it."""
        checkpoint_path = Path(checkpoint_path)
        for name, value in (("step", step), ("epoch", epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r}: expected an int >= 0")
        if not isinstance(config_hash, str) or not config_hash:
            raise ValueError(f"config_hash={config_hash!r}: expected a non-empty string")
        if not checkpoint_path.is_file():
            raise FileNotFoundError(f"cannot push {checkpoint_path}: no such file")
        record = {
            "step": step,
            "epoch": epoch,
            "config_hash": config_hash,
            "sha256": _file_digest(checkpoint_path, "sha256"),
            "size": checkpoint_path.stat().st_size,
        }
        upload_file(checkpoint_path, self.checkpoint_uri, client=self.client)
        with tempfile.TemporaryDirectory() as tmp_dir:
            metadata_path = Path(tmp_dir) / "latest.json"
            metadata_path.write_text(json.dumps(record, indent=2, sort_keys=True))
            upload_file(metadata_path, self.metadata_uri, client=self.client)

    def latest(self) -> dict | None:
        """The parsed latest.json, or None if nothing was pushed yet."""
        bucket, key = parse_s3_uri(self.metadata_uri)
        try:
            body = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                return None
            raise _storage_error(exc, self.client, "reading", self.metadata_uri) from exc
        except BotoCoreError as exc:
            raise _storage_error(exc, self.client, "reading", self.metadata_uri) from exc
        try:
            record = json.loads(body)
            missing = {"step", "epoch", "config_hash", "sha256"} - set(record)
        except (ValueError, TypeError) as exc:
            raise StorageError(f"{self.metadata_uri} is not a JSON object: {exc}") from exc
        if missing:
            raise StorageError(f"{self.metadata_uri} lacks {sorted(missing)}; push again")
        return record

    def pull(self, dest: Path) -> Path | None:
        """Download latest.pt to `dest` (a file, or a directory to hold latest.pt).

        The sha256 is checked before `dest` is replaced, so a corrupt or mismatched object
        never overwrites a good local checkpoint. Returns the path, or None if nothing there.
        """
        record = self.latest()
        if record is None:
            return None
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / "latest.pt"
        return atomic_write(dest, lambda tmp: self._download_verified(tmp, record["sha256"]))

    def _download_verified(self, tmp: Path, sha256: str) -> None:
        """Download latest.pt into `tmp`; StorageError unless its sha256 is `sha256`."""
        _download(self.client, self.checkpoint_uri, tmp)
        actual = _file_digest(tmp, "sha256")
        if actual != sha256:
            raise StorageError(
                f"{self.checkpoint_uri} has sha256 {actual} but {self.metadata_uri} says "
                f"{sha256}: the object is corrupt or a push is in progress; "
                f"retry, or push the checkpoint again"
            )


@dataclass(frozen=True)
class _Upload:
    """One submitted checkpoint: the snapshot the uploader owns and what describes it."""

    number: int  # submission order, from 1
    source: Path  # the trainer's checkpoint file, never touched here
    snapshot: Path
    step: int
    epoch: int
    config_hash: str


class CheckpointUploader:
    """Pushes checkpoints to a `CheckpointMirror` on one background thread, latest wins.

    `submit` returns at once with a snapshot of the checkpoint that the uploader owns: a
    hard link to the just-written file (free, and still the same bytes after the trainer's
    next save replaces the name with `os.replace`), or a copy where links are not allowed.
    A checkpoint submitted while another waits to start replaces it; the upload in flight
    finishes. A failed upload (after `upload_file`'s retries) logs a warning naming the
    endpoint and leaves the next checkpoint to try again. `wait` awaits the last submitted
    checkpoint within a timeout and raises `StorageError` naming the endpoint if it was not
    uploaded. Snapshots live in `snapshot_dir` (beside the checkpoint, so links work) and
    are removed once uploaded or superseded; the trainer's own files are only read.
    """

    SNAPSHOT_GLOB = ".upload-*"

    def __init__(self, mirror: CheckpointMirror, snapshot_dir: Path) -> None:
        self.mirror = mirror
        self.snapshot_dir = Path(snapshot_dir)
        self.num_submitted = self.num_uploaded = self.num_superseded = self.num_failed = 0
        self._cond = threading.Condition()
        self._queued: _Upload | None = None
        self._in_flight: _Upload | None = None
        self._last_done: tuple[_Upload, BaseException | None] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        # Left by a run that ended before its uploads did: never to be uploaded now.
        for stale in self.snapshot_dir.glob(self.SNAPSHOT_GLOB):
            stale.unlink(missing_ok=True)

    def submit(self, checkpoint: Path, *, step: int, epoch: int, config_hash: str) -> None:
        """Queue `checkpoint` for upload (replacing any queued one); returns at once."""
        checkpoint = Path(checkpoint)
        with self._cond:
            if self._closed:
                raise RuntimeError("CheckpointUploader.submit after close")
            self.num_submitted += 1
            number = self.num_submitted
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        snapshot = self.snapshot_dir / f".upload-{number}-{checkpoint.name}"
        _snapshot(checkpoint, snapshot)
        job = _Upload(number, checkpoint, snapshot, step, epoch, config_hash)
        with self._cond:
            superseded, self._queued = self._queued, job
            if superseded is not None:
                self.num_superseded += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="checkpoint-upload", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        if superseded is not None:
            superseded.snapshot.unlink(missing_ok=True)

    def wait(self, timeout_s: float) -> None:
        """Block until the last submitted checkpoint is uploaded, at most `timeout_s` seconds.

        StorageError, naming the endpoint and the local checkpoint (which is kept), if it
        failed or did not finish in time. Returns at once if nothing was submitted.
        """
        with self._cond:
            idle = self._cond.wait_for(
                lambda: self._queued is None and self._in_flight is None, timeout=timeout_s
            )
            if not idle:
                job = self._queued or self._in_flight
                raise StorageError(
                    f"the upload of the step-{job.step} checkpoint to {self.mirror.uri} at S3 "
                    f"endpoint {self.mirror.endpoint_url} did not finish within {timeout_s:g}s "
                    f"(checkpoint_upload_timeout_s). The local checkpoint {job.source} is kept; "
                    f"check the endpoint and run again to resume and upload it."
                )
            if self._last_done is None:
                return
            job, error = self._last_done
        if error is not None:
            raise StorageError(
                f"the last checkpoint (step {job.step}) was not uploaded to {self.mirror.uri} "
                f"at S3 endpoint {self.mirror.endpoint_url}: {error}. The local checkpoint "
                f"{job.source} is kept; run again to resume and upload it."
            ) from error

    def close(self) -> None:
        """Drop the queued checkpoint and stop the thread after the upload in flight (if any
        is still running, it finishes in the background and removes its own snapshot)."""
        with self._cond:
            self._closed = True
            dropped, self._queued = self._queued, None
            self._cond.notify_all()
        if dropped is not None:
            dropped.snapshot.unlink(missing_ok=True)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queued is not None or self._closed)
                if self._queued is None:
                    return
                job, self._queued, self._in_flight = self._queued, None, self._queued
            error = self._upload(job)
            with self._cond:
                self._in_flight = None
                self._last_done = (job, error)
                self._cond.notify_all()

    def _upload(self, job: _Upload) -> BaseException | None:
        """Push one snapshot, then remove it; the error, or None on success."""
        try:
            self.mirror.push(
                job.snapshot, step=job.step, epoch=job.epoch, config_hash=job.config_hash
            )
        except Exception as exc:  # whatever failed, training goes on with the local checkpoint
            with self._cond:
                self.num_failed += 1
            log.warning(
                "checkpoint upload of step %d to %s at S3 endpoint %s failed: %s. The local "
                "checkpoint %s is kept; the next checkpoint will be uploaded.",
                job.step, self.mirror.uri, self.mirror.endpoint_url, exc, job.source,
            )  # fmt: skip
            return exc
        finally:
            job.snapshot.unlink(missing_ok=True)
        with self._cond:
            self.num_uploaded += 1
        log.info("uploaded the step-%d checkpoint to %s", job.step, self.mirror.uri)
        return None


def _snapshot(source: Path, snapshot: Path) -> None:
    """Make `snapshot` hold `source`'s current bytes: a hard link, else a copy."""
    snapshot.unlink(missing_ok=True)
    try:
        os.link(source, snapshot)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(source, snapshot)


def run_dvc(
    args: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run `dvc *args` in `cwd`; StorageError if it exits non-zero or its output reports errors.

    dvc does exit non-zero on an unreachable remote and on failed transfers; the output check
    also catches "ERROR:" / "failed to push" lines in case a dvc version reports them with 0.
    """
    command = [dvc_executable(), *args]
    try:
        proc = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise StorageError(f"`dvc {' '.join(args)}` in {cwd} timed out after {timeout}s") from exc
    output = f"{proc.stdout}\n{proc.stderr}"
    if proc.returncode != 0 or _DVC_FAILURE_RE.search(output):
        raise StorageError(
            f"`dvc {' '.join(args)}` in {cwd} failed (exit code {proc.returncode}):\n"
            f"{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def dvc_executable() -> str:
    """The dvc next to this interpreter (the venv's), else the one on PATH; StorageError if none.

    Beside the interpreter first: a worker started as `.venv/bin/prefect worker start`
    without an activated venv must still run the venv's dvc.
    """
    beside = Path(sys.executable).with_name("dvc")
    found = str(beside) if beside.is_file() else shutil.which("dvc")
    if found is None:
        raise StorageError(
            "dvc not found next to the Python interpreter or on PATH; install dvc[s3]"
        )
    return found


def _object_location(uri: str) -> tuple[str, str]:
    """parse_s3_uri for URIs that must name an object, not just a bucket."""
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"S3 URI {uri!r} names a prefix, not an object; add the object name")
    return bucket, key


def _file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _is_transient(exc: BaseException) -> bool:
    """Connection errors, 5xx, throttling and failed verification are worth a retry."""
    if isinstance(exc, RetriesExceededError):
        return True
    if isinstance(exc, (BotoConnectionError, HTTPClientError, _VerificationError)):
        return True
    if isinstance(exc, ClientError):
        return _status(exc) >= 500 or _error_code(exc) in _TRANSIENT_CODES
    return False


def _bucket_exists(client: Any, bucket: str) -> bool:
    """head_bucket: True if it exists, False on 404; other errors propagate."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _error_code(exc) in _NOT_FOUND_CODES | {"NoSuchBucket"}:
            return False
        raise
    return True


def _storage_error(exc: BaseException, client: Any, action: str, uri: str) -> StorageError:
    """Translate a boto error into a StorageError that says what to check."""
    endpoint = client.meta.endpoint_url
    bucket, _ = parse_s3_uri(uri)
    where = f"{action} {uri} at {endpoint}"
    if isinstance(exc, (BotoConnectionError, HTTPClientError, RetriesExceededError)):
        return StorageError(
            f"cannot reach S3 endpoint {endpoint} while {action} {uri}: {exc}. Check "
            f"AWS_ENDPOINT_URL / JEPA_S3_ENDPOINT_URL and the network (proxy, firewall)."
        )
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return StorageError(
            f"no usable AWS credentials for {where}: set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a profile in ~/.aws/credentials"
        )
    if isinstance(exc, ClientError):
        code = _error_code(exc)
        if code == "NoSuchBucket" or (
            code in _NOT_FOUND_CODES and not _safe_bucket_exists(client, bucket)
        ):
            return StorageError(
                f"bucket {bucket!r} does not exist at {endpoint} ({action} {uri}): create it "
                f"or fix the URI"
            )
        if code in _NOT_FOUND_CODES:
            return StorageError(f"no object {uri} at {endpoint} ({action})")
        if code in _CREDENTIAL_CODES:
            profile = os.environ.get("AWS_PROFILE", "default")
            return StorageError(
                f"S3 endpoint {endpoint} rejected the credentials or denied access ({code}) "
                f"while {action} {uri}. Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
                f"AWS_SESSION_TOKEN, or profile {profile!r} (AWS_PROFILE) in ~/.aws/credentials, "
                f"and that they may access bucket {bucket!r}."
            )
    if isinstance(exc, _VerificationError):
        return StorageError(f"{where}: upload did not verify ({exc}); the local file is kept")
    return StorageError(f"S3 error while {where}: {exc}")


def _safe_bucket_exists(client: Any, bucket: str) -> bool:
    """_bucket_exists for error messages: assume it exists when the check itself fails."""
    try:
        return _bucket_exists(client, bucket)
    except _S3_ERRORS:
        return True
