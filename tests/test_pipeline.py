"""The DVC pipeline: dvc.yaml's declarations, the pretrain stage's resume policy, the
dvclive adapter, and the whole pipeline end to end with the real `dvc`, `git`, `torchrun`
and an S3 protocol server on loopback, on tiny Fashion-MNIST files made by the tests."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from project_files import copy_pipeline

from jepa.compare import PROBE_KEYS, TRAINING_KEYS
from jepa.config import CONF_DIR, LATER_TRAINING_FIELDS, JEPAConfig
from jepa.live import LiveLogger
from jepa.storage import StorageError, run_dvc

REPO = Path(__file__).resolve().parents[1]
DVC_TIMEOUT_S = 300
# Tiny but complete: 128 train images, batch 32, 2 epochs = 8 optimizer steps.
TINY = ("debug=tiny", "epochs=2")


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def stage_paths(stage: dict) -> set[str]:
    declared = set(stage.get("deps", []))
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []):
            declared |= set(entry) if isinstance(entry, dict) else {entry}
    return declared


# ---- dvc.yaml ------------------------------------------------------------------------------


def test_pretrain_tracks_every_training_field() -> None:
    """A parameter left out would let an experiment reuse another config's encoder. The
    fields that the hash leaves out at their earlier value (`LATER_TRAINING_FIELDS`) count
    too: `dvc exp run -S hflip=false` must retrain."""
    params = set(dvc_yaml()["stages"]["pretrain"]["params"])
    training = set(JEPAConfig().training_fields()) | set(LATER_TRAINING_FIELDS)
    assert (training | {"max_steps", "nproc", "nnodes"}) - params == set()


def test_stage_params_exist_and_every_stage_depends_on_the_library() -> None:
    composed = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in dvc_yaml()["stages"].items():
        assert set(stage.get("params", [])) <= set(composed), name
        assert "jepa" in stage["deps"] and "pipelines/common.py" in stage["deps"], name
        assert f"pipelines/{name}.py" in stage["deps"], name


def test_baselines_ignore_training_parameters() -> None:
    params = set(dvc_yaml()["stages"]["baselines"]["params"])
    assert params.isdisjoint(
        {"lr", "epochs", "batch_size", "pretrain_subset", "weight_decay", "ema"}
    )
    assert "pretrain/encoder" not in dvc_yaml()["stages"]["baselines"]["deps"]


def test_every_path_on_a_command_line_is_declared() -> None:
    """Paths are written once, in dvc.yaml: a stage reads or writes nothing undeclared."""
    for name, stage in dvc_yaml()["stages"].items():
        tokens = shlex.split(stage["cmd"])
        last_module = len(tokens) - 1 - tokens[::-1].index("-m")  # the stage's, past a launcher
        script_args = tokens[last_module + 2 :]
        paths = {v for flag, v in itertools.pairwise(script_args) if flag.startswith("--")}
        declared = stage_paths(stage) | {"params.yaml"}
        for path in paths:  # a file, or a directory whose declared parts lie under it
            assert path in declared or any(d.startswith(f"{path}/") for d in declared), (name, path)


def test_no_output_holds_training_state() -> None:
    """`dvc exp run` restores outputs from the last commit before running: an output that
    held the checkpoint would lose an interrupted experiment's progress."""
    outs = dvc_yaml()["stages"]["pretrain"]["outs"]
    names = {next(iter(o)) if isinstance(o, dict) else o for o in outs}
    assert not any("checkpoint" in name for name in names)
    assert not any(isinstance(o, dict) and next(iter(o.values())).get("persist") for o in outs)


# ---- dvclive adapter -----------------------------------------------------------------------


def tsv_steps(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")]


def log_rows(live_dir: Path, steps: range) -> None:
    with LiveLogger(live_dir) as live:
        for step in steps:
            live({"step": step, "epoch": step / 4, "loss": 1.0 / step, "lr": 1e-3})
            if step % 2 == 0:
                live({"step": step, "effective_rank": float(step), "target_std": 0.5})


def test_live_logger_starts_afresh_so_a_replay_never_duplicates_a_step(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no DVC repo around: dvclive runs stand-alone
    live_dir = tmp_path / "dvclive"
    log_rows(live_dir, range(1, 7))  # crashed after step 6, checkpoint at step 4
    log_rows(live_dir, range(1, 9))  # the resumed run replays 1-4 from its checkpoint, then 5-8
    metrics = live_dir / "plots" / "metrics"
    assert tsv_steps(metrics / "loss.tsv") == list(range(1, 9))
    assert tsv_steps(metrics / "effective_rank.tsv") == [2, 4, 6, 8]
    assert not (metrics / "epoch.tsv").exists()  # summary only
    summary = json.loads((live_dir / "metrics.json").read_text())
    assert summary["step"] == 8 and summary["loss"] == pytest.approx(1 / 8)
    assert summary["epoch"] == 2.0

    log_rows(live_dir, range(1, 3))  # a fresh run: nothing old survives
    assert tsv_steps(metrics / "loss.tsv") == [1, 2]
    assert tsv_steps(metrics / "effective_rank.tsv") == [2]


# ---- helpers for runs ------------------------------------------------------------------------


def tool_env() -> dict[str, str]:
    """This interpreter's bin first (python, torchrun, dvc), no analytics, fixed git identity."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    for who in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{who}_NAME"] = "jepa tests"
        env[f"GIT_{who}_EMAIL"] = "tests@example.invalid"
    return env


def run(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, cwd=cwd, env=kw.pop("env", tool_env()), capture_output=True, text=True,
        timeout=DVC_TIMEOUT_S, **kw,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run_dvc(list(args), cwd=repo, env=tool_env(), timeout=DVC_TIMEOUT_S)


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", *args], repo)


def compose(repo: Path, overrides: list[str]) -> None:
    run([sys.executable, "-m", "pipelines.compose", *overrides], repo)


def make_repo(path: Path, overrides: list[str]) -> Path:
    """A git + DVC repository holding this project's pipeline, params composed from jepa/conf/."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    copy_pipeline(path)
    dvc(path, "init", "-q")
    shutil.copy2(REPO / ".dvc" / "config", path / ".dvc" / "config")  # [hydra] enabled
    compose(path, overrides)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "pipeline")
    return path


def exp_revs(shown: list[dict]) -> Iterator[tuple[str, dict]]:
    """(name, data) for the workspace, each commit and each experiment in `dvc exp show --json`."""
    for entry in shown:
        yield entry.get("name") or entry["rev"], entry["data"]
        for exp in entry.get("experiments") or []:
            for rev in exp["revs"]:
                yield rev.get("name") or rev["rev"], rev["data"]


def lock_md5(repo: Path, stage: str, path: str) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"][stage]["outs"] if o["path"] == path)


# ---- the pretrain stage's resume policy -----------------------------------------------------


def pretrain_stage(work: Path, *, crash_at: int | None = None, tag: str = "") -> str:
    """Run `python -m pipelines.pretrain` (no torchrun) in `work`; return its log."""
    env = tool_env()
    env["PYTHONPATH"] = str(REPO)
    if crash_at is not None:
        env.update(
            JEPA_CRASH_AT_STEP=str(crash_at), JEPA_CRASH_ONCE_FILE=str(work / f"crashed{tag}")
        )
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.pretrain", "--params", "params.yaml",
         "--manifest", "manifest.json", "--out", "pretrain", "--live", "pretrain/dvclive",
         "--metrics", "metrics.json"],
        cwd=work, env=env, capture_output=True, text=True, timeout=DVC_TIMEOUT_S,
    )  # fmt: skip
    crashed = crash_at is not None and proc.returncode == 17
    if proc.returncode != 0 and not crashed:
        raise AssertionError(f"pretrain stage failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stderr


def write_params(work: Path, overrides: list[str]) -> None:
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(work / "params.yaml", str(CONF_DIR), None, "config", str(work), overrides)


def state_dirs(store: Path) -> list[Path]:
    return sorted(store.iterdir()) if store.is_dir() else []


@pytest.mark.slow
def test_pretrain_stage_resumes_its_own_run_and_never_another(
    tmp_path: Path, tiny_fmnist: Path
) -> None:
    work, store = tmp_path / "stage", tmp_path / "runs"
    work.mkdir()
    base = [*TINY, f"root_path={tiny_fmnist}", f"run_store={store}"]
    from tiny import tiny_config

    from jepa.prepare import build_manifest, write_manifest

    write_manifest(build_manifest(tiny_config(root_path=str(tiny_fmnist))), work / "manifest.json")
    loss_tsv = work / "pretrain" / "dvclive" / "plots" / "metrics" / "loss.tsv"

    write_params(work, base)
    pretrain_stage(work, crash_at=6)  # checkpoint at step 4, killed after step 6
    assert (work / "crashed").read_text() == "6"
    (state,) = state_dirs(store)
    assert (state / "latest.pt").is_file() and not (work / "pretrain" / "checkpoints").exists()
    shutil.rmtree(work / "pretrain")  # what `dvc exp run` may do to the outputs: no matter
    log = pretrain_stage(work, crash_at=6)
    assert f"resuming: checkpoint {state / 'latest.pt'}" in log
    assert "at step 4" in log
    assert tsv_steps(loss_tsv) == list(range(1, 9))
    rows = [
        json.loads(line) for line in (work / "pretrain" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert state_dirs(store) == []  # finished: the exported encoder is the result
    resumed = json.loads((work / "pretrain" / "summary.json").read_text())

    # Another experiment leaves an unfinished checkpoint of its own config behind ...
    write_params(work, [*base, "lr=5e-3"])
    pretrain_stage(work, crash_at=6, tag="-other")
    assert (work / "crashed-other").exists()
    (other,) = state_dirs(store)
    # ... which the first config neither resumes nor touches.
    write_params(work, base)
    log = pretrain_stage(work)
    assert "starting at step 0: no checkpoint" in log
    assert tsv_steps(loss_tsv) == list(range(1, 9))
    assert state_dirs(store) == [other]
    fresh = json.loads((work / "pretrain" / "summary.json").read_text())
    # Exact resume: the interrupted-and-resumed run equals an uninterrupted one.
    assert fresh["final_loss"] == resumed["final_loss"]
    assert fresh["config_hash"] == resumed["config_hash"]


@pytest.fixture(scope="module")
def pretrained_repo(tmp_path_factory: pytest.TempPathFactory, tiny_fmnist: Path) -> Path:
    """A tiny repository whose pretrain stage ran and was committed, built once per module;
    tests work on copies (`repo_copy`)."""
    base = tmp_path_factory.mktemp("pretrained")
    repo = make_repo(base / "repo", [*TINY, f"root_path={tiny_fmnist}", f"run_store={base}/runs"])
    dvc(repo, "repro", "pretrain")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first run")
    return repo


@pytest.fixture
def repo_copy(pretrained_repo: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pretrained_repo, tmp_path / "repo", symlinks=True))


def interrupted_overrides(data: Path, store: Path) -> list[str]:
    """The -S overrides of the interrupted experiments: `lr=5e-3`, its own run store."""
    return [*TINY, f"root_path={data}", f"run_store={store}", "lr=5e-3"]


def encoder_weights(encoder_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(encoder_dir / "encoder.safetensors")


@pytest.fixture(scope="module")
def uninterrupted_encoder(
    pretrained_repo: Path, tiny_fmnist: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    """The encoder of the interrupted experiments' config, trained without a crash."""
    work = tmp_path_factory.mktemp("uninterrupted")
    shutil.copy2(pretrained_repo / "data" / "manifest.json", work / "manifest.json")
    write_params(work, interrupted_overrides(tiny_fmnist, work / "runs"))
    pretrain_stage(work)
    return encoder_weights(work / "pretrain" / "encoder")


def assert_same_encoder(encoder_dir: Path, expected: dict) -> None:
    import torch

    weights = encoder_weights(encoder_dir)
    assert weights.keys() == expected.keys() and weights
    assert all(torch.equal(weights[k], expected[k]) for k in weights)


def crash_env(marker: Path) -> dict[str, str]:
    """The tools' environment with the crash hook armed: killed after step 6, once
    (the last checkpoint before it is step 4's)."""
    return {**tool_env(), "JEPA_CRASH_AT_STEP": "6", "JEPA_CRASH_ONCE_FILE": str(marker)}


@pytest.mark.slow
def test_an_interrupted_dvc_exp_run_resumes_when_run_again(
    repo_copy: Path, tmp_path: Path, tiny_fmnist: Path, uninterrupted_encoder: dict
) -> None:
    """`dvc exp run` restores the workspace's outputs from the last commit before it runs; the
    checkpoint lives in the run store, so the rerun resumes instead of starting at step 0."""
    repo, store = repo_copy, tmp_path / "runs"
    overrides = interrupted_overrides(tiny_fmnist, store)
    command = ["exp", "run", "pretrain", *(a for o in overrides for a in ("-S", o))]
    crash = crash_env(tmp_path / "x")
    with pytest.raises(StorageError):  # killed after step 6; the last checkpoint is step 4
        run_dvc(command, cwd=repo, env=crash, timeout=DVC_TIMEOUT_S)
    (state,) = state_dirs(store)
    assert (state / "latest.pt").is_file()
    rerun = run_dvc(command, cwd=repo, env=crash, timeout=DVC_TIMEOUT_S)  # the same command
    log = rerun.stdout + rerun.stderr
    assert "resuming: checkpoint" in log and "at step 4" in log, log[-3000:]
    rows = [json.loads(line) for line in (repo / "pretrain" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert state_dirs(store) == []
    assert_same_encoder(repo / "pretrain" / "encoder", uninterrupted_encoder)


def wait_for_queue(repo: Path, timeout_s: float = DVC_TIMEOUT_S) -> str:
    """Poll `dvc queue status` until nothing is queued or running; return the last status."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        status = dvc(repo, "queue", "status").stdout
        if not any(word in status for word in ("Queued", "Running")):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(2)


def queue_tasks(repo: Path) -> list[tuple[str, str, str]]:
    """(task, experiment name, status) of each row of `dvc queue status`."""
    rows = dvc(repo, "queue", "status").stdout.splitlines()
    states = ("Queued", "Running", "Success", "Failed")
    return [
        (*row.split()[:2], next(s for s in states if s in row))
        for row in rows
        if any(s in row for s in states)
    ]


@pytest.mark.slow
def test_an_interrupted_queued_experiment_resumes_when_queued_again(
    repo_copy: Path, tmp_path: Path, tiny_fmnist: Path, uninterrupted_encoder: dict
) -> None:
    """`dvc exp run --queue` + `dvc queue start`, killed mid-pretraining, then the same two
    commands again: the queued run (in DVC's temporary copy of the repo) resumes at the last
    checkpoint's step and ends with the uninterrupted run's encoder."""
    from jepa import checkpoint as ckpt

    repo, store = repo_copy, tmp_path / "runs"
    sets = [a for o in interrupted_overrides(tiny_fmnist, store) for a in ("-S", o)]
    crash = crash_env(tmp_path / "x")

    def queue_and_run() -> None:
        run_dvc(["exp", "run", "--queue", "pretrain", *sets], cwd=repo, env=crash)
        run_dvc(["queue", "start"], cwd=repo, env=crash)
        wait_for_queue(repo)

    queue_and_run()
    (state,) = state_dirs(store)
    assert ckpt.load_checkpoint(state / "latest.pt")["step"] == 4
    queue_and_run()  # the same commands again
    assert (tmp_path / "x").read_text() == "6"  # the first round crashed after step 6
    tasks = queue_tasks(repo)
    assert [status for *_, status in tasks].count("Failed") == 1, tasks
    ((done, name),) = [(task, name) for task, name, status in tasks if status == "Success"]
    log = dvc(repo, "queue", "logs", done).stdout
    assert "resuming: checkpoint" in log and "at step 4" in log, log[-3000:]
    assert state_dirs(store) == []
    # The experiment ran pretrain only: check out that stage's outputs from its commit.
    dvc(repo, "exp", "branch", name, "resumed")
    git(repo, "checkout", "-q", "resumed", "--", "dvc.lock")
    dvc(repo, "checkout", "--force", "pretrain")
    rows = [json.loads(line) for line in (repo / "pretrain" / "metrics.jsonl").open()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 9))
    assert_same_encoder(repo / "pretrain" / "encoder", uninterrupted_encoder)


@pytest.mark.slow
def test_experiments_compare_in_one_table_and_a_readable_exp_show(tmp_path: Path) -> None:
    from fmnist_data import write_tiny_fmnist

    # 1000 test images: accuracies of two lr values are unlikely to tie at 1/64 steps.
    data = write_tiny_fmnist(tmp_path / "data", num_train=128, num_test=1000)
    overrides = [*TINY, f"root_path={data}", f"run_store={tmp_path / 'runs'}"]
    repo = make_repo(tmp_path / "repo", overrides)
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "baseline run")
    sets = [a for o in overrides for a in ("-S", o)]
    dvc(repo, "exp", "run", "--name", "lr5e-3", *sets, "-S", "lr=5e-3")
    dvc(repo, "exp", "run", "--queue", "--name", "lr2e-3", *sets, "-S", "lr=2e-3")
    dvc(repo, "queue", "start")
    assert "Success" in wait_for_queue(repo)

    # A terminal wide enough for the lean metrics and the changed parameters (the width of
    # the Created/State/Executor columns varies with the clock and the queue's state).
    env = {**tool_env(), "COLUMNS": "200"}
    shown = run_dvc(["exp", "show", "--no-pager", "--only-changed"], cwd=repo, env=env).stdout
    # The columns people compare come whole before any elided ones and before the changed
    # dependency hashes DVC lists last: the metrics, then the parameters that differ.
    header = next(line for line in shown.splitlines() if "Experiment" in line)
    visible = header.split("…")[0].split()
    compared = ["final_loss", "img_s", "knn_top1", "top1", "wall_s", "lr"]
    # `--only-changed` hides a metric equal in every row: tiny runs on an idle machine can
    # all take the same time at wall_s's 0.1 s resolution.
    walls = {
        (data.get("metrics") or {}).get("metrics/train.json", {}).get("data", {}).get("wall_s")
        for _, data in exp_revs(json.loads(dvc(repo, "exp", "show", "--json").stdout))
    }
    if len(walls) == 1:
        compared.remove("wall_s")
    assert set(compared) <= set(visible), shown
    dependencies = [i for i, name in enumerate(visible) if "/" in name]
    assert max(visible.index(c) for c in compared) < min(dependencies, default=len(visible)), shown

    done = subprocess.run(
        [sys.executable, "-m", "jepa.cli", "compare", "--repo", str(repo), "--out", "results"],
        cwd=repo, env=tool_env(), capture_output=True, text=True, timeout=DVC_TIMEOUT_S,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open(repo / "results" / "experiments.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["lr"]) for r in rows) == [1e-3, 2e-3, 5e-3]
    assert len({r["final_loss"] for r in rows}) == 3 and len({r["probe_top1"] for r in rows}) >= 2
    table = (repo / "results" / "experiments.md").read_text()
    assert "lr2e-3" in table and "raw pixels" in table
    assert (repo / "results" / "experiments.png").stat().st_size > 10_000


@pytest.mark.slow
def test_rerunning_an_experiment_from_its_commit_reproduces_its_row(
    tmp_path: Path, tiny_fmnist: Path
) -> None:
    import hashlib

    overrides = [*TINY, f"root_path={tiny_fmnist}", f"run_store={tmp_path / 'runs'}"]
    repo = make_repo(tmp_path / "repo", overrides)
    sets = [a for o in overrides for a in ("-S", o)]

    def row() -> dict:
        train = json.loads((repo / "metrics" / "train.json").read_text())
        weights = (repo / "pretrain" / "encoder" / "encoder.safetensors").read_bytes()
        return {
            "probe": json.loads((repo / "metrics" / "probe.json").read_text()),
            "train": {k: v for k, v in train.items() if k not in ("img_s", "wall_s")},  # timing
            "encoder_sha256": hashlib.sha256(weights).hexdigest(),
        }

    dvc(repo, "exp", "run", "--name", "first", *sets, "-S", "lr=5e-3")
    first = row()
    dvc(repo, "exp", "run", "--name", "other", *sets, "-S", "lr=2e-3")
    assert row() != first
    dvc(repo, "exp", "apply", "first")
    dvc(repo, "repro", "--force")  # every stage again, from scratch
    assert row() == first


# ---- end to end --------------------------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_repro_experiment_plots_push_and_pull(
    tmp_path: Path, tiny_fmnist: Path, s3_bucket: tuple[str, str]
) -> None:
    endpoint_url, bucket = s3_bucket
    # Pretrain on 64 of the 128 images (2 epochs of 2 steps); evaluate on all of them.
    overrides = [*TINY, "pretrain_subset=64", f"root_path={tiny_fmnist}"]
    repo = make_repo(tmp_path / "repo", overrides)

    # 1. The whole pipeline.
    dvc(repo, "repro")
    table = (repo / "results" / "results.md").read_text()
    for row in ("pretrained", "raw pixels", "random init"):
        assert row in table
    assert tsv_steps(repo / "pretrain/dvclive/plots/metrics/loss.tsv") == [1, 2, 3, 4]
    features = json.loads((repo / "features/pretrained/features.json").read_text())
    assert features["splits"]["train"]["features_shape"][0] == 128
    baselines = json.loads((repo / "eval/random.json").read_text())
    assert baselines["n_train"] == 128 and baselines["n_test"] == 64
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first run")
    baselines_md5 = lock_md5(repo, "baselines", "eval/pixels.json")

    # Editing a config group's comment changes no stage: jepa/conf is .dvcignore'd, and
    # the stages see only params.yaml (prepare always runs, by design).
    experiment = repo / "jepa" / "conf" / "experiment" / "fmnist_cpu_default.yaml"
    experiment.write_text(experiment.read_text() + "# an edited comment\n")
    status = json.loads(dvc(repo, "status", "--json").stdout)
    assert set(status) <= {"prepare"} and status.get("prepare", ["always changed"]) == [
        "always changed"
    ], status
    git(repo, "checkout", "--", "jepa/conf")

    # 2. An lr experiment: DVC recomposes params.yaml from jepa/conf/ with the -S overrides.
    sets = [arg for o in [*overrides, "lr=5e-3"] for arg in ("-S", o)]
    out = dvc(repo, "exp", "run", "--name", "lr5e-3", *sets).stdout
    assert yaml.safe_load((repo / "params.yaml").read_text())["lr"] == 5e-3
    assert "Stage 'baselines' didn't change" in out  # no training param: reused
    assert lock_md5(repo, "baselines", "eval/pixels.json") == baselines_md5
    shown = dict(exp_revs(json.loads(dvc(repo, "exp", "show", "--json").stdout)))
    first, second = shown["main"], shown["lr5e-3"]
    summaries = [d["metrics"]["metrics/train.json"]["data"] for d in (first, second)]
    assert summaries[0]["final_loss"] != summaries[1]["final_loss"]
    for data in (first, second):
        # Lean metrics: what a reader compares; bookkeeping stays in the outputs.
        assert set(data["metrics"]["metrics/train.json"]["data"]) == set(TRAINING_KEYS)
        assert set(data["metrics"]["metrics/probe.json"]["data"]) == set(PROBE_KEYS)
        assert 0 <= data["metrics"]["metrics/probe.json"]["data"]["top1"] <= 1
        assert "knn_top1" in data["metrics"]["metrics/baselines.json"]["data"]["pixels"]
    lrs = [d["params"]["params.yaml"]["data"]["lr"] for d in (first, second)]
    assert lrs == [pytest.approx(1e-3), pytest.approx(5e-3)]

    # 3. Plots: dvclive's per-step series through `dvc plots show`.
    plots = json.loads(dvc(repo, "plots", "show", "--json").stdout)["data"]
    for name in ("loss", "lr", "momentum", "effective_rank"):
        (spec,) = plots[f"pretrain/dvclive/plots/metrics/{name}.tsv"]
        values = spec["content"]["data"]["values"]
        assert [int(v["step"]) for v in values][:2] == [1, 2] and name in values[0]

    # 4. Push to S3, pull into a fresh clone: the same results, byte for byte.
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "lr experiment")
    dvc(repo, "remote", "add", "-d", "storage", f"s3://{bucket}/dvc")
    dvc(repo, "remote", "modify", "storage", "endpointurl", endpoint_url)
    git(repo, "commit", "-q", "-am", "remote")
    assert "pushed" in dvc(repo, "push").stdout
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "results").exists()
    dvc(clone, "pull")
    for name in ("results.md", "results.csv", "results.png"):
        assert (clone / "results" / name).read_bytes() == (repo / "results" / name).read_bytes()
    assert (clone / "pretrain/encoder/encoder.safetensors").is_file()


@pytest.mark.slow
def test_push_to_an_unreachable_endpoint_fails_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3server import closed_port_url, use_fake_aws_env

    url = closed_port_url()
    use_fake_aws_env(monkeypatch, url)
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    (repo / "data.txt").write_text("something to push\n")
    dvc(repo, "add", "data.txt")
    dvc(repo, "remote", "add", "-d", "storage", "s3://unreachable-bucket/dvc")
    dvc(repo, "remote", "modify", "storage", "endpointurl", url)
    with pytest.raises(StorageError) as info:
        dvc(repo, "push")
    message = str(info.value)
    assert "`dvc push`" in message and "failed" in message
    assert "Could not connect to the endpoint URL" in message and url in message
