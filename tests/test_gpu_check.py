"""`bench/gpu_check.sh` stays runnable on a machine without CUDA and without the pipeline's
tools: every GPU part is skipped by name, the rest runs small and passes."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINE_ONLY = ("dvc", "dvclive", "prefect", "hydra", "omegaconf", "boto3", "botocore", "moto")


@pytest.mark.slow
def test_gpu_check_runs_without_cuda_and_without_pipeline_tools(tiny_fmnist, tmp_path):
    # A sitecustomize that makes the pipeline's packages unimportable, as on a bare GPU box.
    blocker = tmp_path / "bare"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        textwrap.dedent(f"""
        import sys
        class _Bare:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {PIPELINE_ONLY!r}:
                    raise ModuleNotFoundError(f"{{name}} is not installed here")
        sys.meta_path.insert(0, _Bare())
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(blocker), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--data", str(tiny_fmnist), "--quick",
         "--work", str(tmp_path / "work")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    table = done.stdout[done.stdout.rindex("| check | result | detail |") :]
    for name in ("test_bf16_training_without_grad_scaler", "test_resume_on_the_gpu_is_bitwise_exact",
                 "test_torchrun_with_nccl_on_one_gpu", "train_step bench"):  # fmt: skip
        assert any(name in line and "| skipped |" in line for line in table.splitlines()), name
    assert "| data wait, JPEG folder at 224" in table
    assert "| end to end: jepa train + jepa eval (CPU) | pass |" in table
    assert (tmp_path / "work" / "run" / "eval" / "results.md").is_file()
    assert "torch " in done.stdout.splitlines()[0]  # the versions it ran on
