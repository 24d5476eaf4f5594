"""`jepa compare`'s table from `dvc exp show --json`: rows, differing parameters, seeds
grouped as mean ± sd, the workspace kept only when it is nothing else."""

from __future__ import annotations

from jepa.compare import (
    BASELINES,
    PROBE,
    TRAINING,
    experiment_records,
    experiments_markdown,
    group_rows,
)


def rev(name: str, sha: str, lr: float, seed: int, top1: float) -> dict:
    return {
        "rev": sha,
        "name": name,
        "data": {
            "params": {"params.yaml": {"data": {"lr": lr, "seed": seed, "epochs": 7}}},
            "metrics": {
                PROBE: {"data": {"top1": top1, "knn_top1": top1 - 0.1}},
                TRAINING: {"data": {"final_loss": 0.3, "img_s": 300.0, "wall_s": 600.0}},
                BASELINES: {"data": {"pixels": {"top1": 0.84, "knn_top1": 0.85}}},
            },
        },
    }


def shown() -> list[dict]:
    workspace = rev(None, "workspace", 2e-4, 1, 0.80)
    main = rev("main", "a" * 40, 1e-3, 0, 0.82)
    queued = {"rev": "c" * 40, "name": "queued", "data": {}}  # not run yet: no metrics
    experiments = [rev("s0", "d" * 40, 2e-4, 0, 0.78), rev("s1", "e" * 40, 2e-4, 1, 0.80), queued]
    main["experiments"] = [{"revs": [e]} for e in experiments]
    return [workspace, main]


def test_rows_group_seeds_and_name_the_differing_parameters() -> None:
    records = experiment_records(shown())
    assert [r["name"] for r in records] == ["main", "s0", "s1"]  # workspace == s1; queued skipped
    rows = group_rows(records)
    assert [row["experiment"] for row in rows] == ["main", "s0, s1"]
    assert [row["n"] for row in rows] == [1, 2]
    assert "epochs" not in rows[0] and rows[1]["lr"] == 2e-4  # only parameters that differ
    assert rows[1]["probe_top1"] == "79.00 ± 1.41"
    table = experiments_markdown(rows, records)
    assert "| raw pixels | 84.00 | 85.00 |" in table and table.count("raw pixels") == 1


def test_an_uncommitted_workspace_run_is_a_row() -> None:
    only_workspace = [rev(None, "workspace", 1e-3, 0, 0.8)]
    assert [r["rev"] for r in experiment_records(only_workspace)] == ["workspace"]
