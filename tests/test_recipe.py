"""bench/recipe.py, run as a user runs it, on tiny data: one arm's row and its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]


def test_recipe_row_carries_the_matmul_rate_beside_its_wall_time(tiny_fmnist, tmp_path):
    cfg = tiny_config(root_path=str(tiny_fmnist), output_dir=str(tmp_path / "unused"))
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "rows.jsonl"
    # A row from before the rate was recorded: the table prints it with "?" in that column.
    old = {"name": "old", "seed": 0, "steps": 1, "train_tflop": 0.0, "train_s": 1.0,
           "val_top1": 0.5, "top1": 0.5, "knn_top1": 0.5, "monitor_knn_top1": None}  # fmt: skip
    out.write_text(json.dumps(old) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "bench.recipe", "--name", "tiny", "--config", str(config),
         "--set", "max_steps=2", "--seeds", "0", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["name"] for r in rows] == ["old", "tiny"]
    new = rows[1]
    assert new["overrides"] == {"max_steps": 2} and new["steps"] == 2
    before, after = new["fp32_tflops"]
    assert before > 0 and after > 0
    assert 0.0 <= new["val_top1"] <= 1.0 and 0.0 <= new["top1"] <= 1.0
    table = done.stdout.splitlines()
    assert any(line.startswith("| arm |") and "fp32 TFLOP/s" in line for line in table)
    assert any(line.startswith("| old | 0 |") and "| ? |" in line for line in table)
    rate = f"| {before:.3f}–{after:.3f} |"
    assert any(line.startswith("| tiny | 0 |") and rate in line for line in table)
