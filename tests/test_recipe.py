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


def recipe_row(name: str, steps: int, top1: float, **extra) -> dict:
    return {"name": name, "seed": 0, "steps": steps, "train_s": steps / 10.0,
            "val_top1": top1 + 0.01, "top1": top1, "knn_top1": top1 - 0.05, **extra}  # fmt: skip


def test_frontier_draws_recipe_rows_against_the_baselines(tmp_path):
    runs = tmp_path / "runs.jsonl"
    rows = [recipe_row("a", 1000, 0.80, fp32_tflops=[0.1, 0.2]), recipe_row("a", 2000, 0.83),
            recipe_row("b", 1500, 0.81)]  # fmt: skip
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"pixels": {"top1": 0.84}, "random": {"top1": 0.79}}))
    out = tmp_path / "frontier.png"
    done = subprocess.run(
        [sys.executable, "-m", "bench.frontier", "--runs", str(runs), "--baselines",
         str(baselines), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    table = done.stdout.splitlines()
    assert "| a | 0 | 1000 | 1.7 | 0.100–0.200 | 81.00 | 80.00 |" in table
    assert "| b | 0 | 1500 | 2.5 | ? | 82.00 | 81.00 |" in table


def test_frontier_puts_recipes_of_different_step_costs_on_one_time_axis(tmp_path):
    runs = tmp_path / "runs.jsonl"
    rows = [recipe_row("4 px", 3000, 0.86, bench_step_ms=150.0),
            recipe_row("7 px", 6000, 0.87, bench_step_ms=75.0)]  # fmt: skip
    runs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [sys.executable, "-m", "bench.frontier", "--runs", str(runs), "--x", "bench-minutes"]
    done = subprocess.run([*args, "--out", str(tmp_path / "f.png")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "f.png").stat().st_size > 10_000
    assert "| 7 px | 0 | 6000 | 7.5 | 10.0 | ? | 88.00 | 87.00 |" in done.stdout.splitlines()
    from bench.frontier import x_value

    assert x_value(rows[0], "bench-minutes") == x_value(rows[1], "bench-minutes") == 7.5
    # A row without its step time cannot be placed on that axis: it is named, nothing drawn.
    runs.write_text(runs.read_text() + json.dumps(recipe_row("new", 100, 0.8)) + "\n")
    done = subprocess.run([*args, "--out", str(tmp_path / "g.png")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode != 0
    assert f"{runs}:3 ('new') has no 'bench_step_ms'" in done.stderr
    assert not (tmp_path / "g.png").exists()


def test_frontier_names_the_row_it_cannot_read(tmp_path):
    runs = tmp_path / "runs.jsonl"
    runs.write_text(json.dumps(recipe_row("a", 1000, 0.8)) + "\n" + '{"name": "b"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "bench.frontier", "--runs", str(runs), "--out",
         str(tmp_path / "f.png")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert f"{runs}:2 lacks ['steps', 'top1', 'train_s', 'val_top1']" in done.stderr
    assert not (tmp_path / "f.png").exists()
