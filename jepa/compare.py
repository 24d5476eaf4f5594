"""One table across DVC experiments (`jepa compare`).

    dvc repro; dvc exp run -S lr=2e-4; jepa compare     # -> results/experiments.{md,csv,png}

Reads `dvc exp show --json` in a DVC repository: every commit and every experiment
(run in the workspace, committed, or queued and then run) that has the pretrained
encoder's probe metrics. One row each: its name, the parameters that differ between the
rows, the pretrained encoder's linear-probe and kNN top-1, pretraining wall time and
images/s. Rows that differ only in `seed` are one row of mean ± sd over their count.
The baselines (raw pixels, random init) do not depend on training parameters: they are
listed once. The figure overlays the experiments' training-loss curves (their
`pretrain/metrics.jsonl`, read at each experiment's revision with `dvc.api`).
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jepa.io import atomic_output, write_text
from jepa.runs import loss_curve, parse_step_log

# The DVC metrics files: what a reader compares across experiments, with short keys and
# rounded values so that `dvc exp show --only-changed` fits a 120-column terminal. The full
# records (protocol, counts, hashes, device) are the stages' other outputs.
PROBE, BASELINES, TRAINING = "metrics/probe.json", "metrics/baselines.json", "metrics/train.json"
PROBE_KEYS = {"top1": "top1", "knn_top1": "knn_top1"}  # metrics key: probe record key
# (`final_loss`, not `loss`: a metric named like a parameter gets its file's name prefixed)
TRAINING_KEYS = {"final_loss": "final_loss", "rank": "effective_rank", "img_s": "images_per_s",
                 "wall_s": "wall_time_s"}  # metrics key: summary key  # fmt: skip
DECIMALS = {"top1": 4, "knn_top1": 4, "final_loss": 4, "rank": 2, "img_s": 1, "wall_s": 1}
METRICS = {  # table column: (metrics file, key)
    "probe_top1": (PROBE, "top1"),
    "knn_top1": (PROBE, "knn_top1"),
    "wall_time_s": (TRAINING, "wall_s"),
    "images_per_s": (TRAINING, "img_s"),
    "final_loss": (TRAINING, "final_loss"),
}
PERCENT = ("probe_top1", "knn_top1")


def _rounded(values: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    out = {}
    for key, source in keys.items():
        value = values.get(source)
        out[key] = round(value, DECIMALS[key]) if isinstance(value, float) else value
    return out


def probe_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The metrics-file entry of one probe record (`jepa.evaluate.probe`)."""
    return _rounded(record, PROBE_KEYS)


def training_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The metrics-file entry of a pretraining summary (`jepa.train.pretrain`)."""
    return _rounded(summary, TRAINING_KEYS)


STEP_LOG = "pretrain/metrics.jsonl"


def _revisions(shown: list[dict]) -> Iterator[tuple[str, str, dict]]:
    """(name, git revision, data) of every commit and experiment in `dvc exp show --json`."""
    for entry in shown:
        yield entry.get("name") or entry["rev"], entry["rev"], entry.get("data") or {}
        for exp in entry.get("experiments") or []:
            for rev in exp.get("revs") or []:
                yield rev.get("name") or rev["rev"][:7], rev["rev"], rev.get("data") or {}


def _value(data: dict, file: str, key: str | None = None) -> Any:
    node = ((data.get("metrics") or {}).get(file) or {}).get("data")
    return node.get(key) if isinstance(node, dict) and key is not None else node


def experiment_records(shown: list[dict]) -> list[dict]:
    """One record per revision with probe metrics: name, rev, params, metrics. The workspace
    is kept only when it is not also a commit or an experiment (same params and metrics)."""
    records = []
    for name, rev, data in _revisions(shown):
        if _value(data, PROBE, "top1") is None:
            continue  # queued, failed, or never evaluated
        params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
        metrics = {column: _value(data, *where) for column, where in METRICS.items()}
        baselines = _value(data, BASELINES)
        records.append(
            dict(name=name, rev=rev, params=params, metrics=metrics, baselines=baselines)
        )
    workspace = [r for r in records if r["rev"] == "workspace"]
    others = [r for r in records if r["rev"] != "workspace"]
    same = [
        r
        for r in others
        for w in workspace
        if (r["params"], r["metrics"]) == (w["params"], w["metrics"])
    ]
    return others if same or not workspace else workspace + others


def differing_params(records: Sequence[dict]) -> list[str]:
    """Parameter names whose values are not the same in every record."""
    keys = sorted({key for r in records for key in r["params"]})
    return [k for k in keys if len({json.dumps(r["params"].get(k)) for r in records}) > 1]


def group_rows(records: Sequence[dict]) -> list[dict]:
    """Table rows: records that differ only in `seed` become one row (mean ± sd, count)."""
    keys = [k for k in differing_params(records) if k != "seed"]
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(json.dumps([record["params"].get(k) for k in keys]), []).append(record)
    rows = []
    for members in groups.values():
        row = {"experiment": ", ".join(m["name"] for m in members), "n": len(members)}
        row |= {k: members[0]["params"].get(k) for k in keys}
        for column in METRICS:
            values = [m["metrics"][column] for m in members if m["metrics"][column] is not None]
            row[column] = _summary(values, percent=column in PERCENT)
        rows.append(row)
    return rows


def _summary(values: Sequence[float], *, percent: bool) -> str:
    if not values:
        return "–"
    scale = 100 if percent else 1
    mean = statistics.fmean(values) * scale
    fmt = ".2f" if percent else ".4g"
    if len(values) == 1:
        return format(mean, fmt)
    return f"{mean:{fmt}} ± {statistics.stdev(values) * scale:{fmt}}"


def _baseline_lines(records: Sequence[dict]) -> list[str]:
    baselines = next((r["baselines"] for r in records if r["baselines"]), None) or {}
    lines = []
    for kind, label in (("pixels", "raw pixels"), ("random", "random init")):
        m = baselines.get(kind) or {}
        if "top1" in m:
            lines.append(
                f"| {label} | {100 * m['top1']:.2f} | {100 * m.get('knn_top1', float('nan')):.2f} |"
            )
    return lines


HEADERS = {"experiment": "experiment", "n": "runs", "probe_top1": "probe top-1 (%)",
           "knn_top1": "kNN top-1 (%)", "wall_time_s": "pretraining (s)",
           "images_per_s": "images/s", "final_loss": "final loss"}  # fmt: skip


def experiments_markdown(rows: Sequence[dict], records: Sequence[dict]) -> str:
    """The table (parameters under their own names), then the baselines once."""
    columns = list(rows[0]) if rows else ["experiment"]
    lines = ["# Experiments", "", "Seeds of one setting are one row: mean ± sd over its runs.", ""]
    lines += ["| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |"]
    lines += ["|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    if baseline := _baseline_lines(records):
        lines += ["", "Baselines (no training parameter changes them):", "",
                  "| encoder | probe top-1 (%) | kNN top-1 (%) |", "|---|---|---|", *baseline]  # fmt: skip
    return "\n".join(lines) + "\n"


def _write_csv(rows: Sequence[dict], path: Path) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buffer.getvalue())


def loss_curves(repo: Path, records: Sequence[dict]) -> dict[str, tuple[list, list]]:
    """`name -> (steps, losses)` from each record's step log at its revision."""
    import dvc.api

    curves = {}
    for record in records:
        rev = None if record["rev"] == "workspace" else record["rev"]
        text = dvc.api.read(STEP_LOG, repo=str(repo), rev=rev)
        curves[record["name"]] = loss_curve(parse_step_log(text))
    return curves


def _write_figure(rows: Sequence[dict], curves: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    bars, lines = fig.subplots(1, 2)
    names = [row["experiment"] for row in rows]
    for offset, column in ((-0.2, "probe_top1"), (0.2, "knn_top1")):
        means = [float(str(row[column]).split(" ")[0]) if row[column] != "–" else 0 for row in rows]
        bars.bar([i + offset for i in range(len(rows))], means, width=0.4, label=HEADERS[column])
    bars.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
    bars.set_ylabel("top-1 (%)")
    bars.set_title("pretrained encoder")
    bars.legend(loc="lower right", fontsize=8)
    for name, (steps, losses) in curves.items():
        lines.plot(steps, losses, label=name)
    lines.set_xlabel("optimizer step")
    lines.set_ylabel("training loss")
    if curves:
        lines.legend(fontsize=8)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def compare(repo: str | Path = ".", out_dir: str | Path = "results") -> dict[str, Path]:
    """Write `experiments.md`, `.csv` and `.png` under `out_dir` for the experiments of the
    DVC repository `repo`; returns `{"markdown", "csv", "png"}` → path."""
    from jepa.storage import run_dvc

    repo, out_dir = Path(repo), Path(out_dir)
    shown = json.loads(run_dvc(["exp", "show", "--json"], cwd=repo).stdout)
    records = experiment_records(shown)
    if not records:
        raise ValueError(
            f"no experiment in {repo} has probe metrics ({PROBE}); run `dvc repro` or "
            f"`dvc exp run` first"
        )
    rows = group_rows(records)
    paths = {name: out_dir / f"experiments.{ext}" for name, ext in
             (("markdown", "md"), ("csv", "csv"), ("png", "png"))}  # fmt: skip
    write_text(paths["markdown"], experiments_markdown(rows, records))
    _write_csv(rows, paths["csv"])
    _write_figure(rows, loss_curves(repo, records), paths["png"])
    return paths
