"""A training run's files, where its in-progress state lives, and whether to resume it.

A run writes its results under its output directory (`RunFiles`):

    <output_dir>/encoder/        the exported target encoder (`jepa.export`)
    <output_dir>/metrics.jsonl   one JSON row per logged step
    <output_dir>/summary.json    the run summary

Its in-progress state, the latest training checkpoint (`latest.pt`), lives in a state
directory: `<output_dir>/checkpoints/` by default, or a directory of the *run store*
(`run_store_dir`) that the DVC pipeline uses, so that `dvc exp run` restoring the
workspace's outputs can never replace or erase it. The checkpoint also carries the
metrics rows logged so far, so a resumed run rewrites `metrics.jsonl` (and replays its
dvclive plots) from the checkpoint itself, whatever the output directory holds.

`decide_resume` is the one place that decides between resuming and starting fresh.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("jepa.runs")

CHECKPOINT_NAME = "latest.pt"


@dataclass(frozen=True)
class RunFiles:
    """The files of one training run under `root` (its `output_dir`)."""

    root: Path
    state_dir: Path | None = None  # None: `root/checkpoints`

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def checkpoint(self) -> Path:
        return (self.state_dir or self.root / "checkpoints") / CHECKPOINT_NAME

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def encoder(self) -> Path:
        return self.root / "encoder"

    def has_encoder(self) -> bool:
        return (self.encoder / "encoder.json").is_file()

    def is_run(self) -> bool:
        """Whether `root` holds a run's results (summary or step log)."""
        return self.summary.is_file() or self.metrics.is_file()

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of `metrics.jsonl` ([] without the file)."""
        return parse_step_log(self.metrics.read_text()) if self.metrics.is_file() else []

    def read_summary(self) -> dict[str, Any] | None:
        return json.loads(self.summary.read_text()) if self.summary.is_file() else None

    def loss_curve(self) -> tuple[list[int], list[float]] | None:
        """`(steps, losses)` of the training rows, or None without any."""
        steps, losses = loss_curve(self.read_metrics())
        return (steps, losses) if steps else None

    @classmethod
    def holding(cls, path: str | Path) -> RunFiles | None:
        """The run whose `encoder/` export or `checkpoints/latest.pt` is `path`, if any."""
        path = Path(path)
        if path.name == "encoder" and path.is_dir():
            run = cls(path.parent)
        elif path.parent.name == "checkpoints":
            run = cls(path.parent.parent)
        else:
            return None
        return run if run.is_run() else None


def parse_step_log(text: str) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl` text (one JSON object per line)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def loss_curve(rows: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
    """`(steps, losses)` of a step log's training rows."""
    rows = [row for row in rows if "loss" in row]
    return [row["step"] for row in rows], [row["loss"] for row in rows]


# ---- the run store ------------------------------------------------------------------------


def default_run_store() -> Path:
    """`$XDG_CACHE_HOME/jepa/runs`, else `~/.cache/jepa/runs`."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "jepa" / "runs"


def run_store_dir(run_store: str | None, config_hash: str, data_sha256: str) -> Path:
    """The state directory of the run with this training config on this data.

    Keyed by the run's identity, so two experiments never share one and the same
    experiment always finds its own, from any copy of the repository.
    """
    root = Path(run_store).expanduser() if run_store else default_run_store()
    return root / f"{config_hash}-{data_sha256[:16]}"


# ---- resume or start fresh ----------------------------------------------------------------


@dataclass(frozen=True)
class ResumeDecision:
    checkpoint: Path | None  # None: start at step 0
    why: str


def decide_resume(
    files: RunFiles, *, resume: bool, config_hash: str, mirror=None
) -> ResumeDecision:
    """Resume from the state directory's checkpoint, else from the S3 mirror when it holds
    this config's run (a job restarted on another node), else start fresh; logs why.

    A checkpoint of another config is not skipped here: loading it fails with the fields
    that differ (`jepa.checkpoint.load_checkpoint`), since resuming it would mix two runs.
    """
    decision = _decide(files, resume, config_hash, mirror)
    log.info("%s: %s", "resuming" if decision.checkpoint else "starting at step 0", decision.why)
    return decision


def _decide(files: RunFiles, resume: bool, config_hash: str, mirror) -> ResumeDecision:
    path = files.checkpoint
    if not resume:
        return ResumeDecision(None, "resume is false")
    if path.exists():
        return ResumeDecision(path, f"checkpoint {path}")
    if mirror is None:
        return ResumeDecision(None, f"no checkpoint at {path}")
    latest = mirror.latest()
    if latest is None:
        return ResumeDecision(None, f"no checkpoint at {path} or under {mirror.uri}")
    if latest.get("config_hash") != config_hash:
        why = f"{mirror.uri} holds another config's run ({latest.get('config_hash')})"
        return ResumeDecision(None, why)
    mirror.pull(path)
    return ResumeDecision(path, f"{mirror.uri} at step {latest['step']}")


# ---- one trainer per state directory ------------------------------------------------------


class RunLockedError(RuntimeError):
    """Another process is training in the same state directory."""


class RunLock:
    """An exclusive lock on a state directory (`<dir>/.lock`, holding the owner's pid), held
    while a run trains there; a second trainer fails at once instead of writing into the
    same checkpoint. The kernel drops the lock when its holder dies, however it dies."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / ".lock"
        self._file = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115  (held until __exit__)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockedError(
                f"{self.path.parent} is in use by another training process (pid {holder}); "
                f"wait for it to finish or stop it (kill {holder}), or train in another "
                f"output_dir / run_store"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None
