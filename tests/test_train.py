"""Pretraining: it learns, resumes exactly (also after a hard kill), runs under DDP,
stops on a non-finite loss, and refuses another experiment's checkpoint."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny import tiny_config

from jepa import checkpoint as ckpt
from jepa import export
from jepa.config import JEPAConfig
from jepa.train import NonFiniteLossError, pretrain

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(data: Path, out: Path, **kw) -> JEPAConfig:
    """8 steps: 64 images of 28 px in 4x4 patches of 7 px, batch 16, 2 epochs."""
    base = dict(
        root_path=str(data), output_dir=str(out), patch_size=7, embed_dim=32, pred_embed_dim=16,
        batch_size=16, pretrain_subset=64, epochs=2, warmup_epochs=1, checkpoint_every=1,
    )  # fmt: skip
    return tiny_config(**{**base, **kw})


def weights(out: Path) -> dict[str, torch.Tensor]:
    state = ckpt.load_checkpoint(out / "checkpoints" / "latest.pt")
    return {
        f"{part}.{k}": v
        for part in ("encoder", "predictor", "target_encoder")
        for k, v in state[part].items()
    }


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tiny_fmnist, tmp_path_factory):
    """One uninterrupted 8-step run that the other tests compare against."""
    out = tmp_path_factory.mktemp("reference")
    summary = pretrain(tiny_cfg(tiny_fmnist, out))
    return out, summary


def test_run_writes_its_outputs_and_the_loss_falls(reference_run):
    out, summary = reference_run
    assert summary["steps"] == 8 and summary["epochs"] == 2.0
    assert (out / "encoder" / "encoder.safetensors").exists()
    losses = [r["loss"] for r in metric_rows(out) if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert any("effective_rank" in r for r in metric_rows(out))
    # The online kNN monitor: before training and after each of the 2 epochs of 4 steps.
    monitor = [r for r in metric_rows(out) if "monitor_knn_top1" in r]
    assert [r["step"] for r in monitor] == [0, 4, 8]
    assert all(0.0 <= r["monitor_knn_top1"] <= 1.0 and r["monitor_s"] > 0 for r in monitor)
    assert summary["monitor_knn_top1"] == monitor[-1]["monitor_knn_top1"]
    encoder = export.load_encoder(out / "encoder")
    assert encoder.forward_features(torch.zeros(2, 1, 28, 28)).shape == (2, 32)


def test_target_encoder_gets_no_gradient_and_moves_by_ema(reference_run):
    out, _ = reference_run
    state = ckpt.load_checkpoint(out / "checkpoints" / "latest.pt")
    moved = [
        not torch.equal(state["encoder"][k], state["target_encoder"][k]) for k in state["encoder"]
    ]
    assert any(moved)  # EMA lags the context encoder
    opt_params = sum(len(g["params"]) for g in state["optimizer"]["param_groups"])
    trainable = len(state["encoder"]) + len(state["predictor"])
    assert opt_params == trainable  # the optimizer holds no target-encoder tensor


def test_resume_mid_epoch_is_exact(reference_run, tiny_fmnist, tmp_path):
    ref, _ = reference_run
    cfg = tiny_cfg(tiny_fmnist, tmp_path)
    pretrain(cfg.replace(max_steps=3))  # stops mid-epoch 1
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "latest.pt")["step"] == 3
    pretrain(cfg)
    assert_same_weights(ref, tmp_path)
    steps = [r["step"] for r in metric_rows(tmp_path) if "loss" in r]
    assert steps == list(range(1, 9))  # no duplicated or missing rows after resume
    monitored = [r for r in metric_rows(tmp_path) if "monitor_knn_top1" in r]
    reference = [r for r in metric_rows(ref) if "monitor_knn_top1" in r]
    # Steps 0, 3 (where the first run stopped), 4 and 8; the encoder at 4 and 8 is the
    # reference run's, so its kNN top-1 is too.
    assert [r["step"] for r in monitored] == [0, 3, 4, 8]
    assert [r["monitor_knn_top1"] for r in monitored[2:]] == [
        r["monitor_knn_top1"] for r in reference[1:]
    ]


def test_resume_after_a_hard_kill_is_exact(tiny_fmnist, tmp_path):
    # 24 steps, so that the kill lands well before the end even on a fast idle machine.
    cfg = tiny_cfg(tiny_fmnist, tmp_path / "killed", epochs=6)
    pretrain(cfg.replace(output_dir=str(tmp_path / "reference")))
    config_file = tmp_path / "config.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "jepa.train", "--config", str(config_file)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "killed" / "checkpoints" / "latest.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not latest.exists():
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # no cleanup, like a lost node
    proc.wait()
    killed_at = ckpt.load_checkpoint(latest)["step"]
    assert 1 <= killed_at < 24
    pretrain(cfg)
    assert_same_weights(tmp_path / "reference", tmp_path / "killed")


def start_trainer(cfg: JEPAConfig, tmp_path: Path, *launcher: str) -> tuple[subprocess.Popen, int]:
    """Start `python [launcher] -m jepa.train --config` on `cfg`; return it and the pid that
    holds the run's lock once training is under way (the worker's, under torchrun)."""
    import yaml

    config_file = tmp_path / "trainer.yaml"
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, *launcher, "-m", "jepa.train", "--config", str(config_file)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = Path(cfg.output_dir) / "checkpoints" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if lock.is_file() and lock.read_text().strip():
            return proc, int(lock.read_text())
        time.sleep(0.05)
    raise AssertionError(f"no trainer took the lock: {proc.stderr.read().decode()[-2000:]}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")  # a zombie is dead for our purposes
    return not (stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_a_second_trainer_on_the_same_run_fails_at_once_naming_the_first(tiny_fmnist, tmp_path):
    from jepa.runs import RunLockedError

    cfg = tiny_cfg(tiny_fmnist, tmp_path / "run", epochs=200)
    proc, holder = start_trainer(cfg, tmp_path)
    try:
        start = time.time()
        with pytest.raises(RunLockedError, match=f"pid {holder}"):
            pretrain(cfg)
        assert time.time() - start < 30
    finally:
        proc.kill()
        proc.wait()
    assert pretrain(cfg.replace(max_steps=1))["steps"] >= 1  # the kernel freed the lock


def test_workers_die_with_their_torchrun(tiny_fmnist, tmp_path):
    """torchrun starts each worker in its own session: killing torchrun (or its process
    group) must not leave a worker training on."""
    cfg = tiny_cfg(tiny_fmnist, tmp_path / "run", epochs=200)
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1")
    proc, worker = start_trainer(cfg, tmp_path, *launcher)
    assert worker != proc.pid
    proc.kill()  # SIGKILL: torchrun cannot pass anything on
    proc.wait()
    deadline = time.time() + 20
    while alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(worker), "the worker outlived its torchrun"


def test_checkpoint_of_another_experiment_is_refused(reference_run, tiny_fmnist, tmp_path):
    cfg = tiny_cfg(tiny_fmnist, tmp_path)
    pretrain(cfg.replace(max_steps=1))
    with pytest.raises(ckpt.CheckpointError, match="lr"):
        pretrain(cfg.replace(lr=5e-3))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_fmnist, tmp_path):
    cfg = tiny_cfg(tiny_fmnist, tmp_path, max_steps=2)
    pretrain(cfg)
    path = tmp_path / "checkpoints" / "latest.pt"
    good = weights(tmp_path)
    # Poison Adam's second moments: the next update turns the weights into NaN.
    state = ckpt.load_checkpoint(path)
    for slot in state["optimizer"]["state"].values():
        slot["exp_avg_sq"].fill_(-1.0)
    torch.save(state, path)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        pretrain(cfg.replace(max_steps=None))
    assert ckpt.load_checkpoint(path)["step"] == 2
    for key, value in weights(tmp_path).items():
        assert torch.equal(value, good[key]), key


def test_loss_is_read_only_on_steps_that_log_check_or_checkpoint(
    tiny_fmnist, tmp_path, monkeypatch
):
    """Reading the loss waits for the device: the hot loop does it every few steps."""
    import jepa.train

    reads = []
    original = jepa.train.Run.read_loss

    def counted(run):
        reads.append(run.step)
        return original(run)

    monkeypatch.setattr(jepa.train.Run, "read_loss", counted)
    cfg = tiny_cfg(tiny_fmnist, tmp_path, epochs=4, log_every=5, diagnostics_every=6)
    pretrain(cfg.replace(checkpoint_every=100))  # 16 steps, 4 per epoch
    assert reads == [1, 4, 5, 6, 8, 10, 12, 15, 16]


def test_non_finite_loss_between_reads_never_reaches_a_checkpoint(tiny_fmnist, tmp_path):
    cfg = tiny_cfg(tiny_fmnist, tmp_path, epochs=4, log_every=100, diagnostics_every=100)
    cfg = cfg.replace(checkpoint_every=100)  # reads and checkpoints at epoch ends only
    pretrain(cfg.replace(max_steps=4))
    path = tmp_path / "checkpoints" / "latest.pt"
    state = ckpt.load_checkpoint(path)
    for slot in state["optimizer"]["state"].values():
        slot["exp_avg_sq"].fill_(-1.0)  # step 5 turns the weights into NaN
    torch.save(state, path)
    with pytest.raises(NonFiniteLossError, match="step 8"):
        pretrain(cfg)
    assert ckpt.load_checkpoint(path)["step"] == 4


def test_a_bf16_training_step_on_the_cpu(tiny_fmnist, tmp_path):
    """The autocast path that CUDA runs by default, exercised on the CPU (`amp: bf16`)."""
    summary = pretrain(tiny_cfg(tiny_fmnist, tmp_path, amp="bf16", max_steps=2))
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert all(v.dtype == torch.float32 for v in state["encoder"].values())  # fp32 master weights


def test_two_ddp_processes_match_one_process(tiny_fmnist, tmp_path):
    """2 gloo ranks with batch 8 each == 1 process with batch 16.

    Random masking keeps every sample's mask a function of its index alone; multi-block
    masks share one block size per (local) batch, so they differ with the batch split.
    """
    cfg = tiny_cfg(tiny_fmnist, tmp_path / "single", mask_strategy="random", epochs=1)
    pretrain(cfg)
    config_file = tmp_path / "ddp.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(cfg.replace(output_dir=str(tmp_path / "ddp")).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "jepa.train",
        "--config",
        str(config_file),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    single, ddp = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
