"""Cluster faults with real processes on loopback (gloo): two torchrun nodes meet in a c10d
rendezvous, also through the pipeline's pretrain stage; a worker killed mid-run is restarted
by torchrun and training resumes exactly; the launch settings come from params.yaml, with
torchrun's PET_* variables winning."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_train import tiny_cfg

from jepa.config import ConfigError
from pipelines.torchrun import launch_options

ROOT = Path(__file__).resolve().parents[1]
RANK_WEIGHTS = ROOT / "tests" / "rank_weights.py"
TIMEOUT_S = 300


# ---- launch settings: params, PET_* variables -------------------------------------------------


def write_params(path: Path, **values) -> Path:
    path.write_text(yaml.safe_dump({"lr": 1e-3, "nproc": 2, **values}))
    return path


def test_one_node_without_a_rendezvous_is_standalone(tmp_path: Path) -> None:
    params = write_params(tmp_path / "params.yaml")
    assert launch_options(str(params), {}) == [
        "--standalone", "--nproc_per_node", "2", "--nnodes", "1", "--max_restarts", "0",
    ]  # fmt: skip


def test_the_rendezvous_comes_from_params_and_pet_variables_win(tmp_path: Path) -> None:
    params = write_params(
        tmp_path / "params.yaml",
        nnodes=2,
        rdzv_endpoint="head:29400",
        rdzv_id="job",
        max_restarts=3,
    )
    assert launch_options(str(params), {}) == [
        "--nproc_per_node", "2", "--nnodes", "2", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", "head:29400", "--rdzv_id", "job", "--max_restarts", "3",
    ]  # fmt: skip
    # A job template's variables win: their options are left to torchrun, which reads them.
    env = {"PET_NNODES": "4:4", "PET_RDZV_ENDPOINT": "pod-0:29400", "PET_MAX_RESTARTS": "0"}
    assert launch_options(str(params), env) == [
        "--nproc_per_node", "2", "--rdzv_backend", "c10d", "--rdzv_id", "job",
    ]  # fmt: skip
    # One node in params, several in the environment: not standalone.
    single = write_params(tmp_path / "single.yaml")
    assert "--standalone" not in launch_options(str(single), env)


def test_several_nodes_without_an_endpoint_is_an_error(tmp_path: Path) -> None:
    params = write_params(tmp_path / "params.yaml", nnodes=2)
    with pytest.raises(ConfigError, match="rdzv_endpoint"):
        launch_options(str(params), {})
    with pytest.raises(ConfigError, match="max_restarts must be >= 0"):
        launch_options(str(write_params(tmp_path / "bad.yaml", max_restarts=-1)), {})


# ---- real processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_env() -> dict[str, str]:
    """The worktree's `jepa` first (also for the script `rank_weights.py`), one thread per
    worker, no PET_* variable of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PET_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    return env


def start(cmd: list[str], log: Path, cwd: Path = ROOT, env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` in a session of its own, its output to the file `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env or launcher_env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def test_a_launch_leaves_no_log_folder_behind_unless_asked_for_one(tmp_path: Path) -> None:
    """torchrun alone leaves a `torchelastic_*` folder in the temporary directory per launch;
    the pipeline's launcher removes the one it makes, after success and after a failure,
    and keeps a log folder the command line asked for."""
    script = tmp_path / "worker.py"
    script.write_text("import sys\nsys.exit(int(sys.argv[1]))\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**launcher_env(), "TMPDIR": str(scratch)}
    launch = [sys.executable, "-m", "pipelines.torchrun", "--standalone", "--nproc_per_node", "1"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*launch, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )

    done = run(str(script), "0")
    assert done.returncode == 0, done.stderr[-3000:]
    failed = run(str(script), "3")
    assert failed.returncode == 3 and "rank 0 exited with 3" in failed.stderr, failed.stderr
    assert not list(scratch.glob("torchelastic_*"))
    kept = run("--log-dir", str(tmp_path / "logs"), str(script), "0")
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert list((tmp_path / "logs").iterdir())  # torchrun's run folder, left for the user


def finish(proc: subprocess.Popen, log: Path) -> str:
    """Wait for `proc` (killing its session on a timeout); return its log, checked for rc 0."""
    try:
        proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, f"{proc.args} exited with {proc.returncode}:\n{text[-4000:]}"
    return text


def rank_weights(out: Path, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)


def assert_equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def two_process_run(tiny_fmnist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted single-node run of 2 processes (24 steps, a checkpoint after each),
    through the pipeline's launcher with `nproc: 2` in its params; each rank's weights in
    `rank<R>.pt` of the returned folder, which holds its params file as `params.yaml`."""
    work = tmp_path_factory.mktemp("two-process")
    cfg = tiny_cfg(tiny_fmnist, work / "run", epochs=6)
    params = write_params(work / "params.yaml", **cfg.to_dict())
    launch = [sys.executable, "-m", "pipelines.torchrun", "--params", str(params)]
    cmd = [*launch, str(RANK_WEIGHTS), str(work), "--config", str(params)]
    finish(start(cmd, work / "log.txt"), work / "log.txt")
    return work


@pytest.mark.slow
def test_two_torchrun_nodes_end_with_the_weights_of_one_two_process_node(
    two_process_run: Path, tmp_path: Path
) -> None:
    """Two `torchrun` invocations, one process each, meet in a c10d rendezvous on
    loopback: both ranks end with the same weights, equal to one node's 2-process run."""
    params = two_process_run / "params.yaml"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for node_rank in (0, 1):
        cmd = [
            "torchrun", "--nnodes", "2", "--node_rank", str(node_rank), "--nproc_per_node", "1",
            "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint, "--rdzv_id", "two-nodes",
            str(RANK_WEIGHTS), str(tmp_path), "--config", str(params),
            "--set", f"output_dir={tmp_path / 'run'}",
        ]  # fmt: skip
        nodes.append(start(cmd, tmp_path / f"node{node_rank}.txt"))
    for node_rank, proc in enumerate(nodes):
        finish(proc, tmp_path / f"node{node_rank}.txt")
    summary = yaml.safe_load((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 24
    assert_equal_weights(rank_weights(tmp_path, 0), rank_weights(tmp_path, 1))
    assert_equal_weights(rank_weights(tmp_path, 0), rank_weights(two_process_run, 0))


def workers(launcher: int) -> dict[int, int]:
    """{rank: pid} of the torchrun workers that are children of the process `launcher`."""
    found = {}
    for task in Path(f"/proc/{launcher}/task").iterdir():
        try:  # a thread or a child may end while we read
            for pid in (task / "children").read_text().split():
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                rank = next((v for v in environ if v.startswith(b"RANK=")), None)
                if rank is not None:
                    found[int(rank[5:])] = int(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_training_resumes_exactly(
    two_process_run: Path, tmp_path: Path
) -> None:
    """`max_restarts: 1` in params: SIGKILL rank 1 of 2 after a checkpoint; torchrun restarts
    the group, both ranks resume from the latest checkpoint, and the final weights equal the
    uninterrupted run's."""
    values = yaml.safe_load((two_process_run / "params.yaml").read_text())
    run_dir = tmp_path / "run"
    values.update(output_dir=str(run_dir), max_restarts=1)
    params = write_params(tmp_path / "params.yaml", **values)
    launch = [sys.executable, "-m", "pipelines.torchrun", "--params", str(params)]
    log = tmp_path / "log.txt"
    proc = start([*launch, str(RANK_WEIGHTS), str(tmp_path), "--config", str(params)], log)
    latest = run_dir / "checkpoints" / "latest.pt"
    deadline = time.time() + TIMEOUT_S
    while proc.poll() is None and not latest.exists() and time.time() < deadline:
        time.sleep(0.01)
    victim = workers(proc.pid).get(1)
    assert proc.poll() is None and victim is not None, "the run ended before the kill"
    os.kill(victim, signal.SIGKILL)
    text = finish(proc, log)
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", text)]
    assert len(resumed) == 2 and resumed[0] == resumed[1], text[-3000:]  # both ranks, once
    assert 1 <= resumed[0] < 24
    for rank in (0, 1):
        assert_equal_weights(rank_weights(tmp_path, rank), rank_weights(two_process_run, rank))


# ---- the pipeline on two nodes ----------------------------------------------------------------


def readme_command(first_words: str) -> list[str]:
    """The README's command that starts with `first_words` (backslash continuations joined)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith(first_words)]
    return shlex.split(line)


@pytest.mark.slow
def test_the_pretrain_stage_runs_on_two_nodes(tmp_path: Path, tiny_fmnist: Path) -> None:
    """Node 0 is `dvc repro pretrain` with the rendezvous in params; node 1 joins with the
    README's command for extra nodes, in the same checkout (a shared volume)."""
    from test_pipeline import TINY, dvc, make_repo, tool_env

    extra_node = readme_command("python -m pipelines.torchrun --params params.yaml")
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["pretrain"]
    assert extra_node == shlex.split(stage["cmd"])  # extra nodes run the stage's command
    rendezvous = [f"rdzv_endpoint=127.0.0.1:{free_port()}", "rdzv_id=pipeline"]
    overrides = [*TINY, f"root_path={tiny_fmnist}", f"run_store={tmp_path / 'runs'}"]
    repo = make_repo(tmp_path / "repo", [*overrides, "nnodes=2", *rendezvous])
    env = {k: v for k, v in tool_env().items() if not k.startswith("PET_")}
    node1 = start(extra_node, tmp_path / "node1.txt", cwd=repo, env=env)
    try:
        dvc(repo, "repro", "pretrain")
    finally:
        log = finish(node1, tmp_path / "node1.txt")
    assert "starting at step 0" in log  # rank 1 trained here
    summary = yaml.safe_load((repo / "pretrain" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == summary["total_steps"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["pretrain"]["params"]["params.yaml"]["nnodes"] == 2


def _start_at(rank: int, world_size: int, store_file: str, steps: list[int], out: str) -> None:
    import torch.distributed as dist

    from jepa.runs import RunFiles
    from jepa.train import check_same_start

    dist.init_process_group(
        "gloo", store=dist.FileStore(store_file, world_size), rank=rank, world_size=world_size
    )
    try:
        check_same_start(steps[rank], RunFiles(Path(out) / str(rank)))
        Path(out, f"ok{rank}").write_text("ok")
    except RuntimeError as err:
        Path(out, f"error{rank}").write_text(str(err))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("steps", [[4, 4], [4, 0]])
def test_ranks_that_would_start_at_different_steps_all_stop(tmp_path: Path, steps) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_start_at, args=(2, str(tmp_path / "store"), steps, str(tmp_path)), nprocs=2)
    if steps[0] == steps[1]:
        assert {p.name for p in tmp_path.glob("ok*")} == {"ok0", "ok1"}
        return
    errors = [(tmp_path / f"error{rank}").read_text() for rank in (0, 1)]
    for error in errors:
        assert "steps 0 to 4" in error and "run_store" in error
