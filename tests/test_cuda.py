"""The CUDA path: bf16 training, exact resume on the GPU, CUDA RNG, NCCL under torchrun, and
the GPU probe and kNN against the CPU ones.

Marked `cuda` and skipped (with the reason) where no GPU is visible. `bench/gpu_check.py`
runs them on a GPU machine, with pytest when it is installed and without it otherwise, so
every test takes only `tmp_path` and builds its own data.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from jepa import checkpoint as ckpt
from jepa.config import JEPAConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # fmnist_data, also without pytest

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible"),
]


def gpu_cfg(tmp_path: Path, **overrides) -> JEPAConfig:
    """A tiny run on generated Fashion-MNIST, on the GPU in bf16 (the CUDA default)."""
    from fmnist_data import write_tiny_fmnist

    data = tmp_path / "data"
    if not data.exists():
        write_tiny_fmnist(data)
    base = dict(
        dataset="fashion_mnist", root_path=str(data), image_size=28, patch_size=7, in_chans=1,
        model="custom", embed_dim=64, depth=2, num_heads=2, pred_embed_dim=32, pred_depth=1,
        pred_num_heads=2, min_keep=2, batch_size=16, epochs=2, warmup_epochs=1, lr=1e-3,
        num_workers=2, progress=False, output_dir=str(tmp_path / "out"), checkpoint_every=2,
        log_every=1, diagnostics_every=2, device="cuda", amp="auto",
    )  # fmt: skip
    return JEPAConfig.from_dict({**base, **overrides})


def weights(out: Path) -> dict[str, torch.Tensor]:
    state = ckpt.load_checkpoint(out / "checkpoints" / "latest.pt")
    return {f"{n}.{k}": v for n in ("encoder", "target_encoder") for k, v in state[n].items()}


def test_bf16_training_without_grad_scaler(tmp_path: Path) -> None:
    from jepa.train import pretrain

    scaler = torch.amp.GradScaler
    try:  # bf16 has fp32's range: no loss scaling, so nothing may build a GradScaler
        torch.amp.GradScaler = None  # type: ignore[assignment]
        summary = pretrain(gpu_cfg(tmp_path))
    finally:
        torch.amp.GradScaler = scaler
    assert summary["device"].startswith("cuda") and np.isfinite(summary["final_loss"])
    assert all(v.dtype == torch.float32 for v in weights(tmp_path / "out").values())


def test_resume_on_the_gpu_is_bitwise_exact(tmp_path: Path) -> None:
    script = f"""
import sys, torch
sys.path.insert(0, {str(ROOT / "tests")!r})
torch.use_deterministic_algorithms(True)
from test_cuda import gpu_cfg
from jepa.train import pretrain
from pathlib import Path
tmp = Path(sys.argv[1])
pretrain(gpu_cfg(tmp / "a", num_workers=0))
cfg = gpu_cfg(tmp / "b", num_workers=0)
pretrain(cfg.replace(max_steps=3))
pretrain(cfg)
"""
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = weights(tmp_path / "a" / "out"), weights(tmp_path / "b" / "out")
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_cuda_rng_state_is_restored(tmp_path: Path) -> None:
    torch.cuda.manual_seed_all(3)
    state = ckpt.capture_rng_state()
    want = torch.rand(4, device="cuda")
    torch.rand(100, device="cuda")
    ckpt.restore_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda"), want)


def test_torchrun_with_nccl_on_one_gpu(tmp_path: Path) -> None:
    import yaml

    cfg = gpu_cfg(tmp_path, epochs=1)
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "jepa.train", "--config", str(config)]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "encoder" / "encoder.safetensors").is_file()


def test_gpu_probe_and_knn_agree_with_the_cpu(tmp_path: Path) -> None:
    from jepa.probe import knn_accuracy, linear_probe

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 32)) * 2.0
    train_y, test_y = rng.integers(0, 10, 2000), rng.integers(0, 10, 500)
    train_x = (centers[train_y] + rng.normal(size=(2000, 32)) * 1.5).astype(np.float32)
    test_x = (centers[test_y] + rng.normal(size=(500, 32)) * 1.5).astype(np.float32)
    results = {}
    for device in ("cpu", "cuda"):
        probe = linear_probe(train_x, train_y, test_x, test_y, backend="torch", device=device)
        knn = knn_accuracy(train_x, train_y, test_x, test_y, device=device)
        results[device] = (probe["top1"], knn["knn_top1"])
    (probe_cpu, knn_cpu), (probe_gpu, knn_gpu) = results["cpu"], results["cuda"]
    assert abs(probe_cpu - probe_gpu) <= 0.01 and abs(knn_cpu - knn_gpu) <= 0.004
