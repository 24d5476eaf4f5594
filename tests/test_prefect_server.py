"""A real `prefect server start` on loopback, this repo's prefect.yaml deployed to it, and a
process worker that runs a scheduled flow run to completion."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.process import kill_process_group

REPO_ROOT = Path(__file__).resolve().parents[1]

PREFECT = str(Path(sys.executable).with_name("prefect"))
STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """A private Prefect profile: its own home and SQLite database, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_CLI_WRAP_LINES": "false",
    }


def start(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO_ROOT
) -> subprocess.Popen:
    """Start `cmd` in its own session, output to `log`, so the test can kill its whole tree."""
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> str:
    proc = subprocess.run(
        [PREFECT, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(interval)
    raise AssertionError(f"{what} within {timeout}s")


def api(api_url: str, method: str, path: str, body: dict | None = None):
    request = urllib.request.Request(
        f"{api_url}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


def healthy(api_url: str) -> bool:
    try:
        return api(api_url, "GET", "/health") is True
    except OSError:
        return False


@pytest.fixture
def prefect_server(tmp_path) -> Iterator[tuple[str, dict[str, str]]]:
    """`prefect server start` on 127.0.0.1:<free port>; (api_url, env for CLI calls)."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp_path / "prefect-home", api_url)
    log = tmp_path / "server.log"
    server = start(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env,
        log,
    )
    try:
        wait_for(
            lambda: healthy(api_url) or server.poll() is not None,
            STARTUP_TIMEOUT_S,
            "the server did not answer /api/health",
        )
        assert server.poll() is None, f"server exited:\n{log.read_text()}"
        yield api_url, env
    finally:
        kill_process_group(server.pid, grace_s=10)
        server.wait()


@pytest.mark.slow
def test_scheduled_deployment_runs_on_a_process_worker(prefect_server, tmp_path):
    api_url, env = prefect_server
    cli("work-pool", "create", "jepa-process", "--type", "process", env=env)
    cli(
        "work-pool", "create", "jepa-gpu", "--type", "kubernetes",
        "--base-job-template", str(REPO_ROOT / "flows/k8s/gpu-job-template.json"), env=env,
    )  # fmt: skip

    # Every deployment in prefect.yaml is accepted: entrypoints load, parameters match the
    # flows' signatures, job variables fit the pools' templates.
    cli("--no-prompt", "deploy", "--all", env=env, timeout=120)
    deployments = {d["name"]: d for d in api(api_url, "POST", "/deployments/filter", {})}
    assert set(deployments) == {"nightly", "smoke", "gpu-cluster"}
    nightly = deployments["nightly"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["work_pool_name"] == "jepa-process"
    assert deployments["gpu-cluster"]["job_variables"]["gpus_per_node"] == 8

    # The smoke deployment again, now on a 5-second schedule writing into tmp_path.
    marker = tmp_path / "smoke.json"
    cli(
        "--no-prompt", "deploy", "--name", "smoke", "--interval", "5",
        "--param", f"marker={marker}", env=env, timeout=120,
    )  # fmt: skip
    smoke_id = api(api_url, "GET", "/deployments/name/jepa-smoke/smoke")["id"]
    runs_filter = {"deployments": {"id": {"any_": [smoke_id]}}}
    wait_for(
        lambda: api(api_url, "POST", "/flow_runs/filter", runs_filter),
        60,
        "the scheduler created no run for the smoke deployment",
    )

    log = tmp_path / "worker.log"
    worker = start(
        [PREFECT, "worker", "start", "--pool", "jepa-process", "--run-once", "--limit", "1",
         "--install-policy", "never"],
        env,
        log,
    )  # fmt: skip
    try:
        worker.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker ran past {RUN_TIMEOUT_S}s:\n{log.read_text()}")
    finally:
        kill_process_group(worker.pid, grace_s=5)
    runs = api(api_url, "POST", "/flow_runs/filter", runs_filter)
    completed = [r for r in runs if r["state_type"] == "COMPLETED"]
    assert completed, f"no completed run: {[r['state_type'] for r in runs]}\n{log.read_text()}"
    run = completed[0]
    assert run["auto_scheduled"]  # created by the schedule, not by hand
    assert json.loads(marker.read_text())["flow_run_id"] == run["id"]


def render_gpu_job() -> dict:
    """flows/k8s/gpu-job-template.json rendered with the gpu-cluster deployment's variables."""
    import yaml
    from prefect.utilities.templating import apply_values

    template = json.loads((REPO_ROOT / "flows/k8s/gpu-job-template.json").read_text())
    config = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in config["deployments"] if d["name"] == "gpu-cluster")
    defaults = {k: v.get("default") for k, v in template["variables"]["properties"].items()}
    values = defaults | deployment["work_pool"]["job_variables"] | {"command": "prefect run"}
    return apply_values(template["job_configuration"], values)["job_manifest"]


def test_gpu_job_template_requests_gpus_and_sets_up_torchrun_rendezvous(tmp_path):
    job = render_gpu_job()
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert job["spec"]["completionMode"] == "Indexed"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    env = {e["name"]: e.get("value") for e in container["env"]}
    # Kubernetes takes only strings as env values.
    assert all(isinstance(v, str) for v in env.values() if v is not None), env
    assert env["PET_NNODES"] == "2:2"
    assert env["PET_RDZV_ENDPOINT"] == f"$(JOB_NAME)-0.{pod['subdomain']}:29400"
    assert "{{" not in json.dumps(job)

    # Pod 0 runs the worker's command; the others join the rendezvous with the pretrain
    # stage's own command (README: several nodes), its launch settings from PET_*.
    assert env["PET_NPROC_PER_NODE"] == "gpu" and env["PET_MAX_RESTARTS"] == "0"
    import yaml

    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["pretrain"]["cmd"]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python").write_text('#!/bin/sh\necho "python $*"\n')
    (fake_bin / "python").chmod(0o755)
    for index, expected in (("0", "flow run"), ("1", stage)):
        out = subprocess.run(
            [*container["command"], "echo", "flow", "run"],
            env={"PATH": f"{fake_bin}:/usr/bin:/bin", "JOB_COMPLETION_INDEX": index},
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert out.strip() == expected, (index, out)
