"""The DVC pipeline as a Prefect flow: one task per `dvc.yaml` stage.

Prefect schedules, retries, times out and records the run; DVC alone decides what is
up to date. So every stage task runs `dvc repro --single-item <stage>` in the repo (a
stage whose dependencies, params and outputs are unchanged is skipped by DVC), and
Prefect's own result caching is off: a cached "Completed" would hide a stale output.

The first task writes `params.yaml` the way `dvc exp run` with Hydra enabled does:
compose `jepa/conf/config.yaml` with overrides, resolve interpolations, dump as YAML.

Retrying `pretrain` resumes rather than restarts: the stage finds its checkpoint in the
run store (`run_store`, keyed by the run's identity; see `pipelines/pretrain.py`). With
`checkpoint_uri` the checkpoints are mirrored to S3 as well, and a retry on a machine
without the run store's copy resumes from there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.process import CommandResult, run_in_process_group
from jepa.io import atomic_write

STAGES = ("prepare", "pretrain", "extract", "baselines", "probe", "report")

# Budgets for one attempt of each stage. The command is killed (with its process
# group) when its budget runs out; the Prefect task timeout, a little longer, is a
# backstop should the kill itself hang.
STAGE_TIMEOUT_S: dict[str, float] = {
    "prepare": 3600,
    "pretrain": 72 * 3600,
    "extract": 4 * 3600,
    "baselines": 4 * 3600,
    "probe": 4 * 3600,
    "report": 1800,
}
KILL_GRACE_S = 20.0  # inside the 30 s a Prefect runner waits before SIGKILL of the flow run
PRETRAIN_RETRIES = 2
PRETRAIN_RETRY_DELAY_S = 5

DEFAULT_EXPERIMENT = "fmnist_cpu_default"
PARAMS_FILE = "params.yaml"
RESULTS_TABLE = "results/results.md"  # written by the `report` stage (dvc.yaml)

_DVC_SKIPPED = ("didn't change, skipping", "is cached - skipping run")
_UNQUOTED = re.compile(r"[A-Za-z0-9_\-/.+@%*?|]+")


@dataclass(frozen=True)
class StageRun:
    """One stage as the flow saw it: whether DVC ran or skipped it, and its output tails."""

    stage: str
    skipped: bool
    duration_s: float
    stdout: str
    stderr: str

    @classmethod
    def from_result(cls, stage: str, result: CommandResult) -> StageRun:
        # dvc 3's words for "up to date" and "restored from the run cache".
        output = result.stdout + result.stderr
        skipped = any(f"Stage '{stage}' {msg}" in output for msg in _DVC_SKIPPED)
        return cls(stage, skipped, result.duration_s, result.stdout, result.stderr)


# --------------------------------------------------------------------------- params.yaml


def hydra_overrides(overrides: Mapping[str, Any] | None, experiment: str | None) -> list[str]:
    """`{"lr": 2e-4}` → `["lr=0.0002"]`, in Hydra's override grammar; `experiment` first.

    A key may carry Hydra's own prefixes (`+key`, `~key`, `group/option`).
    """
    items = [] if experiment is None else [f"experiment={format_hydra_value(experiment)}"]
    for key, value in (overrides or {}).items():
        if key == "experiment":
            raise ValueError("pass the experiment as the flow's `experiment` argument")
        items.append(f"{key}={format_hydra_value(value)}")
    return items


def format_hydra_value(value: Any) -> str:
    """One value as Hydra override text: YAML-like scalars, `[a,b]` lists, quoted strings."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        # Unquoted only when Hydra would read it back as this same string (not 1e3, true, null).
        if _UNQUOTED.fullmatch(value) and yaml.safe_load(value) == value:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise TypeError(f"override value {value!r} ({type(value).__name__}) has no Hydra form")


def compose_params_file(repo_dir: str | Path, overrides: list[str]) -> dict[str, Any]:
    """Compose `repo_dir/jepa/conf` with `overrides` into `repo_dir/params.yaml`; return its values.

    `pipelines.compose` calls DVC's own `compose_and_dump` (so the bytes are what `dvc exp
    run` would write) and validates the result; it writes through `jepa.io.atomic_write`,
    so a failed or interrupted composition leaves the previous params.yaml whole.
    """
    from pipelines.compose import REPO_CONF_DIR, compose

    repo = Path(repo_dir).resolve()
    # The temporary file keeps the .yaml suffix, from which compose_and_dump picks YAML.
    atomic_write(
        repo / PARAMS_FILE, lambda tmp: compose(tmp, overrides, conf_dir=repo / REPO_CONF_DIR)
    )
    return yaml.safe_load((repo / PARAMS_FILE).read_text())


# --------------------------------------------------------------------------- tasks


@task(name="compose-params", cache_policy=NO_CACHE, timeout_seconds=300)
def compose_params(
    repo_dir: str, experiment: str, overrides: dict[str, Any] | None, checkpoint_uri: str | None
) -> dict[str, Any]:
    """Write `params.yaml` for this run; return the composed values.

    `progress` defaults to false: a progress bar's redraws would reach the Prefect log
    as one line each (it is no stage's param, so it invalidates nothing).
    """
    overrides = {"progress": False, **(overrides or {})}
    if checkpoint_uri is not None:
        overrides["checkpoint_uri"] = checkpoint_uri
    items = hydra_overrides(overrides, experiment)
    params = compose_params_file(repo_dir, items)
    get_run_logger().info("composed %s with overrides %s", PARAMS_FILE, items)
    return params


@task(cache_policy=NO_CACHE)
def repro_stage(stage: str, repo_dir: str, timeout_s: float) -> StageRun:
    """`dvc repro --single-item <stage>` in its own process group; DVC skips it if up to date."""
    from jepa.storage import dvc_executable

    logger = get_run_logger()
    env = stage_env()

    def forward(stream: str, line: str) -> None:
        logger.info("%s | %s", stage, line)

    result = run_in_process_group(
        [dvc_executable(), "repro", "--single-item", stage],
        cwd=repo_dir,
        env=env,
        timeout=timeout_s,
        grace_s=KILL_GRACE_S,
        on_line=forward,
    )
    run = StageRun.from_result(stage, result)
    logger.info("%s: %s in %.1fs", stage, "up to date" if run.skipped else "ran", run.duration_s)
    return run


def stage_task(stage: str) -> Task:
    """The `repro_stage` task configured for `stage`: its name, timeout and retries."""
    timeout_s = STAGE_TIMEOUT_S[stage]
    options: dict[str, Any] = {
        "name": stage,
        "timeout_seconds": timeout_s + 2 * KILL_GRACE_S,
    }
    if stage == "pretrain":  # preemption or a crash: the retry resumes from the checkpoint
        options |= {"retries": PRETRAIN_RETRIES, "retry_delay_seconds": PRETRAIN_RETRY_DELAY_S}
    return repro_stage.with_options(**options)


@task(name="push", cache_policy=NO_CACHE, timeout_seconds=4 * 3600)
def push_artifacts(repo_dir: str, dvc_remote_url: str | None) -> str:
    """`dvc push` the pipeline outputs; to `dvc_remote_url` if given, else the default remote."""
    from jepa.storage import resolve_endpoint_url, run_dvc

    repo = Path(repo_dir)
    remote_args: list[str] = []
    if dvc_remote_url is not None:
        # --local: the remote goes to .dvc/config.local, not into the committed config.
        run_dvc(["remote", "add", "--local", "--force", "flow", dvc_remote_url], cwd=repo)
        endpoint = resolve_endpoint_url()
        if endpoint is not None and dvc_remote_url.startswith("s3://"):
            run_dvc(["remote", "modify", "--local", "flow", "endpointurl", endpoint], cwd=repo)
        remote_args = ["--remote", "flow"]
    lines = run_dvc(["push", *remote_args], cwd=repo).stdout.strip().splitlines()
    get_run_logger().info("dvc push: %s", lines[-1] if lines else "done")
    return dvc_remote_url or "default remote"


def stage_env() -> dict[str, str]:
    """This process's environment, with its interpreter's bin/ first on PATH.

    dvc.yaml's commands name `python` and `torchrun`; a worker started as
    `.venv/bin/prefect worker start` without an activated venv would otherwise run
    them with whatever interpreter PATH finds first.
    """
    bin_dir = os.path.dirname(sys.executable)  # not resolved: a venv's python is a symlink
    path = os.environ.get("PATH", "")
    return {
        **os.environ,
        "PATH": bin_dir + (os.pathsep + path if path else ""),
        "PYTHONUNBUFFERED": "1",  # stage logs reach the Prefect log as they are written
    }


# --------------------------------------------------------------------------- flow


@flow(name="jepa-pipeline")
def jepa_pipeline(
    overrides: dict[str, Any] | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    repo_dir: str = ".",
    checkpoint_uri: str | None = None,
    dvc_remote_url: str | None = None,
    push: bool = False,
    until: str | None = None,
) -> dict[str, Any]:
    """prepare → pretrain → extract → baselines → probe → report, each via `dvc repro`.

    `overrides` are Hydra overrides on top of `experiment` (e.g. `{"lr": 2e-4}`);
    `checkpoint_uri` (s3://...) mirrors and resumes the pretraining checkpoint;
    `push` sends the outputs to the DVC remote (`dvc_remote_url` or the default one);
    `until` stops after that stage (e.g. "pretrain" on a GPU pool, the rest elsewhere).
    Returns the composed params, each stage's `StageRun`, and the results table's path
    (None when `report` did not run).
    """
    stages_to_run = stages_until(until)
    repo = str(Path(repo_dir).resolve())
    params = compose_params(repo, experiment, overrides, checkpoint_uri)
    runs = {
        stage: stage_task(stage)(stage, repo, STAGE_TIMEOUT_S[stage]) for stage in stages_to_run
    }
    pushed = push_artifacts(repo, dvc_remote_url) if push else None
    return {
        "params": params,
        "stages": runs,
        "results_table": str(Path(repo) / RESULTS_TABLE) if "report" in runs else None,
        "pushed_to": pushed,
    }


# --------------------------------------------------------------------------- sweeps


def experiment_name(overrides: Mapping[str, Any], index: int) -> str:
    """A DVC experiment name for one override set, e.g. `sweep-1-lr-0.0002` (git-ref safe)."""
    words = "-".join(f"{k}-{format_hydra_value(v)}" for k, v in sorted(overrides.items()))
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"sweep-{index}-{words}").strip("-.")[:100]


@task(name="save-experiment", cache_policy=NO_CACHE, timeout_seconds=600)
def save_experiment(repo_dir: str, name: str) -> str:
    """`dvc exp save --name NAME`: the workspace's params, lock, metrics and outputs as an
    experiment. Files git does not track yet (a fresh repository's params.yaml, dvc.lock,
    metrics/) go in too; DVC's outputs are git-ignored, and cached."""
    from jepa.storage import run_dvc

    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"],
        cwd=repo_dir, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    include = [arg for path in untracked for arg in ("--include-untracked", path)]
    run_dvc(["exp", "save", "--force", "--name", name, *include], cwd=Path(repo_dir))
    return name


@task(name="compare", cache_policy=NO_CACHE, timeout_seconds=600)
def compare_task(repo_dir: str) -> str:
    """`jepa compare`: one table across the repository's experiments."""
    from jepa.compare import compare

    return str(compare(repo_dir, Path(repo_dir) / "results")["markdown"])


@flow(name="jepa-sweep")
def jepa_sweep(
    override_sets: list[dict[str, Any]],
    experiment: str = DEFAULT_EXPERIMENT,
    repo_dir: str = ".",
    checkpoint_uri: str | None = None,
) -> dict[str, Any]:
    """Run the pipeline once per override set, one after another (each through
    `jepa_pipeline`'s per-stage tasks, so retries and resume stay where they are), record
    each as a DVC experiment (`dvc exp save`), and end with the comparison table
    (`results/experiments.md`). Returns the experiment names and the table's path."""
    if not override_sets:
        raise ValueError("override_sets is empty; give at least one dict of Hydra overrides")
    repo = str(Path(repo_dir).resolve())
    names = []
    for index, overrides in enumerate(override_sets, 1):
        jepa_pipeline(
            overrides=overrides, experiment=experiment, repo_dir=repo, checkpoint_uri=checkpoint_uri
        )
        names.append(save_experiment(repo, experiment_name(overrides, index)))
    return {"experiments": names, "table": compare_task(repo)}


def stages_until(until: str | None) -> tuple[str, ...]:
    """The stages up to and including `until` (all of them for None), in pipeline order.

    Only a prefix: `--single-item` does not look upstream, so a stage may run only
    after everything it depends on has been brought up to date in the same run.
    """
    if until is None:
        return STAGES
    if until not in STAGES:
        raise ValueError(f"until={until!r} is not a stage; choose one of {', '.join(STAGES)}")
    return STAGES[: STAGES.index(until) + 1]
