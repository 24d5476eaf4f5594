"""Prefect layer: the process-group runner, and the pipeline flow run end to end on tiny data."""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

# Prefect reads its settings when first imported: give this test process a private home
# (profiles, local result storage, the test harness's database) and no telemetry.
_PREFECT_HOME = tempfile.mkdtemp(prefix="jepa-prefect-home-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]

# After PREFECT_HOME is set: prefect reads its settings at import.
from flows.process import (  # noqa: E402
    CommandError,
    CommandTimeoutError,
    group_alive,
    run_in_process_group,
)
from jepa.storage import dvc_executable  # noqa: E402

# ---- run_in_process_group ---------------------------------------------------------------

# A parent that starts a sleeping child and waits: the shape of dvc → torchrun → worker.
# With "ignore-term" the parent also ignores SIGTERM, so only SIGKILL stops it.
SPAWNER = textwrap.dedent(
    """
    import os, signal, subprocess, sys, time
    if sys.argv[1] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    with open(sys.argv[2], "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    print("started", flush=True)
    time.sleep(300)
    """
)


def _pids(path: Path, within: float = 20.0) -> tuple[int, int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and len(text := path.read_text().split()) == 2:
            return int(text[0]), int(text[1])
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {within}s")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may wait for PID 1 to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.mark.parametrize("mode", ["plain", "ignore-term"])
def test_timeout_kills_parent_and_child(tmp_path, mode):
    script, pids = tmp_path / "spawn.py", tmp_path / "pids"
    script.write_text(SPAWNER)
    start = time.monotonic()
    with pytest.raises(CommandTimeoutError, match="timed out after 3") as info:
        run_in_process_group(
            [sys.executable, str(script), mode, str(pids)], tmp_path, timeout=3, grace_s=1.0
        )
    assert time.monotonic() - start < 15
    parent, child = _pids(pids)
    assert not _running(parent) and not _running(child)
    assert not group_alive(parent)
    assert info.value.result.stdout == "started"


def test_exception_in_caller_kills_the_group(tmp_path):
    """An exception raised into the waiting thread (Prefect's task timeout, a cancellation's
    TerminationSignal, Ctrl-C) must not leave the command running."""
    script, pids = tmp_path / "spawn.py", tmp_path / "pids"
    script.write_text(SPAWNER)

    class Interrupt(BaseException):
        pass

    def interrupt_when_started() -> None:
        _pids(pids)
        import ctypes

        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(caller), ctypes.py_object(Interrupt)
        )

    caller = threading.get_ident()
    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(Interrupt):
        run_in_process_group(
            [sys.executable, str(script), "plain", str(pids)], tmp_path, timeout=60, grace_s=1.0
        )
    parent, child = _pids(pids)
    assert not _running(parent) and not _running(child)


def test_cancellation_sigterm_kills_the_group(tmp_path):
    """A worker cancels a flow run with SIGTERM to the flow run's process, which Prefect's
    engine turns into a `TerminationSignal` exception (`capture_sigterm`); the stage's
    process group, in a session of its own, must go with it."""
    script, pids = tmp_path / "spawn.py", tmp_path / "pids"
    script.write_text(SPAWNER)
    flow_process = tmp_path / "flow_process.py"
    flow_process.write_text(
        textwrap.dedent(
            f"""
            import sys
            from prefect.utilities.engine import capture_sigterm
            from flows.process import run_in_process_group
            with capture_sigterm():
                run_in_process_group(
                    [sys.executable, {str(script)!r}, "plain", {str(pids)!r}], ".", grace_s=1.0
                )
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(flow_process)], cwd=tmp_path, stderr=subprocess.PIPE
    )
    try:
        parent, child = _pids(pids, within=60)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert not _running(parent) and not _running(child), stderr.decode()[-2000:]


def test_nonzero_exit_raises_with_stderr_tail(tmp_path):
    code = "import sys; print('fine'); [print(f'line {i}', file=sys.stderr) for i in range(500)]; sys.exit(3)"
    lines: list[tuple[str, str]] = []
    with pytest.raises(CommandError, match=r"exit code 3(.|\n)*line 499") as info:
        run_in_process_group(
            [sys.executable, "-c", code], tmp_path, on_line=lambda s, ln: lines.append((s, ln))
        )
    assert "line 0\n" not in str(info.value)  # a tail, not the whole output
    assert info.value.result.returncode == 3
    assert ("stdout", "fine") in lines and ("stderr", "line 499") in lines


def test_success_returns_output_and_reaps_leftovers(tmp_path):
    """A background process the command left behind goes with the group."""
    pid_file = tmp_path / "bg"
    code = textwrap.dedent(
        f"""
        import subprocess, sys
        bg = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open({str(pid_file)!r}, "w").write(str(bg.pid))
        print("done")
        """
    )
    result = run_in_process_group(
        [sys.executable, "-c", code], tmp_path, env={**os.environ, "X": "1"}, grace_s=1.0
    )
    assert result.returncode == 0 and result.stdout == "done"
    assert not _running(int(pid_file.read_text()))


# ---- params.yaml and the stage list ---------------------------------------------------------


def test_stages_are_dvc_yaml_stages_in_dependency_order():
    from flows.pipeline import STAGES

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    assert sorted(STAGES) == sorted(stages)
    for i, stage in enumerate(STAGES):  # every dependency produced by an earlier stage
        deps = set(stages[stage].get("deps", []))
        for later in STAGES[i + 1 :]:
            outs = {
                next(iter(o)) if isinstance(o, dict) else o for o in stages[later].get("outs", [])
            }
            outs |= {next(iter(m)) for m in stages[later].get("metrics", [])}
            assert not deps & outs, f"{stage} depends on {deps & outs} from {later}"


def test_hydra_overrides_quote_what_the_grammar_needs():
    from flows.pipeline import hydra_overrides

    assert hydra_overrides(
        {"lr": 2e-4, "pretrain_subset": None, "compile": True, "crop_scale": [0.4, 1.0], "amp": "bf16",
         "checkpoint_uri": "s3://bucket/run 1", "image_folder": "123"},
        "fmnist_cpu_default",
    ) == [
        "experiment=fmnist_cpu_default", "lr=0.0002", "pretrain_subset=null", "compile=true",
        "crop_scale=[0.4,1.0]", "amp=bf16", "checkpoint_uri='s3://bucket/run 1'",
        "image_folder='123'",
    ]  # fmt: skip


def test_params_file_matches_dvc_hydra_composition_and_is_replaced_atomically(tmp_path):
    from dvc.utils.hydra import compose_and_dump

    from flows.pipeline import compose_params_file, hydra_overrides

    shutil.copytree(REPO_ROOT / "jepa" / "conf", tmp_path / "jepa" / "conf")
    overrides = hydra_overrides(
        {"lr": 2e-4, "checkpoint_uri": "s3://bucket/prefix", "crop_scale": [0.4, 1.0]},
        "fmnist_cpu_default",
    )
    params = compose_params_file(tmp_path, overrides)
    assert (params["lr"], params["checkpoint_uri"], params["crop_scale"]) == (
        2e-4, "s3://bucket/prefix", [0.4, 1.0],
    )  # fmt: skip
    # What `dvc exp run -S ...` with Hydra enabled writes, byte for byte.
    expected = tmp_path / "dvc-params.yaml"
    compose_and_dump(
        expected, str(tmp_path / "jepa" / "conf"), None, "config", str(tmp_path), overrides
    )
    assert (tmp_path / "params.yaml").read_bytes() == expected.read_bytes()

    before = (tmp_path / "params.yaml").read_bytes()
    with pytest.raises(Exception, match="no_such_key"):
        compose_params_file(tmp_path, ["no_such_key=1"])
    with pytest.raises(Exception, match="depth"):  # composes, but JEPAConfig rejects it
        compose_params_file(tmp_path, ["depth=0"])
    assert (tmp_path / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dvc-params.yaml", "jepa", "params.yaml"]


# ---- the flow, end to end on tiny data ------------------------------------------------------

# Copied into each test repo: what dvc.yaml's stages run and depend on.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


@pytest.fixture(scope="module")
def prefect_api():
    """A throwaway Prefect server (its own SQLite database) for this module's flow runs."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # Also when another test module imported prefect before this one set PREFECT_HOME.
    with temporary_settings({PREFECT_HOME: _PREFECT_HOME}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


def make_repo(root: Path) -> tuple[Path, Path]:
    """A git + DVC repo holding this project's pipeline, and tiny Fashion-MNIST beside it."""
    from fmnist_data import write_tiny_fmnist
    from project_files import copy_pipeline

    repo = root / "repo"
    repo.mkdir()
    copy_pipeline(repo)
    env = {**os.environ, **GIT_ENV}
    run = functools.partial(subprocess.run, cwd=repo, env=env, check=True, capture_output=True)
    run(["git", "init", "-q"])
    run([dvc_executable(), "init", "-q"])
    run(["git", "add", "-A"])
    run(["git", "commit", "-qm", "pipeline"])  # dvclive's experiment tracking wants a commit
    return repo, write_tiny_fmnist(root / "data")


def tiny_overrides(data: Path, **more) -> dict:
    """debug=tiny (a 2-block ViT, 1 epoch of 32-image batches) on the test's 128 images."""
    return {"debug": "tiny", "root_path": str(data), "num_workers": 0, **more}


def task_runs(flow_run_id) -> dict:
    """The flow run's task runs by task name (`pretrain`, not `pretrain-3f2`)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        return {run.name.rsplit("-", 1)[0]: run for run in runs}


def task_logs(task_run_id) -> str:
    """All log messages the API holds for a task run, oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # logs travel to the API in batches
    log_filter = LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id]))
    messages: list[str] = []
    with get_client(sync_client=True) as client:
        while page := client.read_logs(
            log_filter, limit=200, offset=len(messages), sort=LogSort.TIMESTAMP_ASC
        ):
            messages += [log.message for log in page]
    return "\n".join(messages)


def task_states(task_run_id) -> list:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_task_run_states(task_run_id)


@pytest.mark.slow
def test_pipeline_end_to_end(prefect_api, tmp_path, s3_server, s3_bucket):
    from flows.pipeline import STAGES, jepa_pipeline

    repo, data = make_repo(tmp_path)
    remote = f"s3://{s3_bucket[1]}/dvcstore"
    state = jepa_pipeline(
        overrides=tiny_overrides(data, lr=2e-3),
        repo_dir=str(repo),
        dvc_remote_url=remote,
        push=True,
        return_state=True,
    )
    assert state.is_completed(), state.message
    out = state.result()
    assert out["pushed_to"] == remote
    listing = s3_server.client().list_objects_v2(Bucket=s3_bucket[1], Prefix="dvcstore/")
    assert listing["KeyCount"] > 0  # the encoder, features, eval records, results
    table = Path(out["results_table"])
    assert table == repo / "results" / "results.md"
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")]
    kinds = [row.split("|")[1].strip() for row in rows[1:]]  # rows[0]: the header
    assert [k.split()[0] for k in kinds] == ["pretrained", "raw", "random"], table.read_text()
    assert not any(run.skipped for run in out["stages"].values())
    assert out["params"]["lr"] == 2e-3 and out["params"]["depth"] == 2  # override + debug=tiny
    assert yaml.safe_load((repo / "params.yaml").read_text()) == out["params"]
    ran = task_runs(state.state_details.flow_run_id)
    assert set(STAGES) <= set(ran) and all(ran[s].state.is_completed() for s in STAGES)

    # Again, same params: Prefect runs every task (no result cache), DVC skips what is
    # up to date; `prepare` always runs (its data lives outside the repo).
    again = jepa_pipeline(
        overrides=tiny_overrides(data, lr=2e-3), repo_dir=str(repo), until="extract"
    )
    assert {s: r.skipped for s, r in again["stages"].items()} == {
        "prepare": False,
        "pretrain": True,
        "extract": True,
    }


@pytest.mark.slow
def test_pretrain_retry_resumes_from_checkpoint(prefect_api, tmp_path, monkeypatch):
    """The training process dies right after step 2 (like a preempted node); the task's
    retry reruns the stage, which resumes from the step-2 checkpoint."""
    from flows.pipeline import jepa_pipeline

    repo, data = make_repo(tmp_path)
    marker = tmp_path / "crashed"
    monkeypatch.setenv("JEPA_CRASH_AT_STEP", "2")
    monkeypatch.setenv("JEPA_CRASH_ONCE_FILE", str(marker))
    overrides = tiny_overrides(data, checkpoint_every=1)
    state = jepa_pipeline(
        overrides=overrides, repo_dir=str(repo), until="pretrain", return_state=True
    )

    assert state.is_completed(), state.message
    assert marker.read_text() == "2"  # the crash did happen
    pretrain = task_runs(state.state_details.flow_run_id)["pretrain"]
    assert pretrain.run_count == 2
    names = [s.name for s in task_states(pretrain.id)]
    assert "Retrying" in names and names[-1] == "Completed", names
    # The failed attempt's error and the stage's own log lines reach the Prefect log.
    logs = task_logs(pretrain.id)
    assert "failed with exit code" in logs and "resumed from" in logs

    log = state.result()["stages"]["pretrain"].stderr
    assert re.search(r"resumed from \S*latest\.pt at step 2 \(epoch 0\)", log), log
    metrics = [
        json.loads(line) for line in (repo / "pretrain/metrics.jsonl").read_text().splitlines()
    ]
    steps = [row["step"] for row in metrics if "loss" in row]  # log_every=1: one row per step
    assert steps == list(range(1, 5))  # 128 images / batch 32, no gap, no repeat


@pytest.mark.slow
def test_sweep_records_each_override_set_as_an_experiment_and_compares(prefect_api, tmp_path):
    import csv

    from flows.pipeline import experiment_name, jepa_sweep
    from jepa.storage import run_dvc

    assert (
        experiment_name({"lr": 2e-4, "model": "vit_small"}, 1)
        == "sweep-1-lr-0.0002-model-vit_small"
    )
    repo, data = make_repo(tmp_path)
    sets = [tiny_overrides(data, lr=1e-3), tiny_overrides(data, lr=4e-3)]
    out = jepa_sweep(override_sets=sets, repo_dir=str(repo))
    assert len(out["experiments"]) == 2
    shown = run_dvc(["exp", "show", "--json"], cwd=repo).stdout
    for name in out["experiments"]:
        assert name in shown
    with open(repo / "results" / "experiments.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(row["lr"]) for row in rows) == [1e-3, 4e-3]
    assert rows[0]["final_loss"] != rows[1]["final_loss"]
    assert Path(out["table"]) == repo / "results" / "experiments.md"
