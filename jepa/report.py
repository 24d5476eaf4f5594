"""Results table, CSV and figure from run records.

A run record is a dict with a `name`, a `kind` ("measured", the default, or "baseline":
e.g. raw pixels or a random-init encoder), and any of the columns below. Accuracies in
run records are fractions in [0, 1], as `jepa.probe` returns them; they may be given flat
(`probe_top1`, `probe_top5`, `knn_top1`) or as the metrics dicts themselves
(`"probe": linear_probe(...)`, `"knn": knn_accuracy(...)`); flat keys win. Rows, the
Markdown table and the CSV hold accuracies in percent, like published tables.

Published numbers are never mixed with measured ones: they are rows of kind "reference",
carry their `source`, and get their own table in `results.md`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from jepa.config import MODEL_SIZES
from jepa.evaluate import KINDS as ENCODER_KINDS
from jepa.io import atomic_output, atomic_write, write_text
from jepa.runs import RunFiles

COLUMNS = (
    "name",
    "kind",
    "dataset",
    "probe_top1",
    "probe_top5",
    "knn_top1",
    "epochs",
    "wall_time_s",
    "images_per_s",
    "final_loss",
    "effective_rank",
    "source",
)
ACCURACY_COLUMNS = ("probe_top1", "probe_top5", "knn_top1")
KINDS = ("measured", "baseline", "reference")

_I_JEPA_PAPER = (
    "Assran et al., Self-Supervised Learning from Images with a Joint-Embedding Predictive "
    "Architecture (I-JEPA), CVPR 2023, arXiv:2301.08243; ImageNet-1k linear probe"
)
# I-JEPA's own ImageNet-1k linear-probe top-1 (percent). The seed document's table
# (I-JEPA 72.4, MAE 68.5, iBOT 74.7, DINOv2 78.3) is left out: it names no source.
PAPER_REFERENCES: list[dict[str, Any]] = [
    {"name": "I-JEPA ViT-B/16", "dataset": "imagenet1k", "probe_top1": 72.9, "source": _I_JEPA_PAPER},
    {"name": "I-JEPA ViT-L/16", "dataset": "imagenet1k", "probe_top1": 77.5, "source": _I_JEPA_PAPER},
    {"name": "I-JEPA ViT-H/14", "dataset": "imagenet1k", "probe_top1": 79.3, "source": _I_JEPA_PAPER},
]  # fmt: skip

_HEADERS = {
    "name": "run",
    "kind": "kind",
    "dataset": "dataset",
    "probe_top1": "probe top-1 (%)",
    "probe_top5": "probe top-5 (%)",
    "knn_top1": "kNN top-1 (%)",
    "epochs": "epochs",
    "wall_time_s": "wall time (s)",
    "images_per_s": "images/s",
    "final_loss": "final loss",
    "effective_rank": "effective rank",
    "source": "source",
}
_FORMATS = {"probe_top1": ".2f", "probe_top5": ".2f", "knn_top1": ".2f", "wall_time_s": ".1f"}
_FORMATS |= {"images_per_s": ".1f", "final_loss": ".4g", "effective_rank": ".1f", "epochs": "g"}
_MEASURED_COLUMNS = COLUMNS[:-1]
_REFERENCE_COLUMNS = ("name", "dataset", "probe_top1", "probe_top5", "knn_top1", "source")


# ---- rows ---------------------------------------------------------------------------------------


def _run_row(run: dict) -> dict[str, Any]:
    """One measured/baseline record → a row with percentages."""
    if not run.get("name"):
        raise ValueError(f"a run record needs a 'name', got keys {sorted(run)}")
    kind = run.get("kind", "measured")
    if kind not in ("measured", "baseline"):
        raise ValueError(f"run {run['name']!r}: kind={kind!r} is not 'measured' or 'baseline'")
    probe, knn = run.get("probe") or {}, run.get("knn") or {}
    nested = {"probe_top1": probe.get("top1"), "probe_top5": probe.get("top5")}
    nested["knn_top1"] = knn.get("knn_top1")
    row: dict[str, Any] = {column: run.get(column) for column in COLUMNS}
    row["kind"] = kind
    for column in ACCURACY_COLUMNS:
        value = row[column] if row[column] is not None else nested[column]
        if value is not None and not 0 <= value <= 1:
            raise ValueError(
                f"run {run['name']!r}: {column}={value} is not a fraction in [0, 1]; "
                "pass accuracies as jepa.probe returns them"
            )
        row[column] = None if value is None else round(100 * float(value), 6)
    return row


def _reference_row(reference: dict) -> dict[str, Any]:
    if not reference.get("name") or not reference.get("source"):
        raise ValueError(f"a reference needs a 'name' and a 'source', got {reference!r}")
    return {**{column: reference.get(column) for column in COLUMNS}, "kind": "reference"}


def build_results(
    runs: Sequence[dict], *, references: Sequence[dict] | None = None
) -> list[dict[str, Any]]:
    """Rows (dicts keyed by `COLUMNS`) for the measured runs, then the baselines, then the
    published references (`PAPER_REFERENCES` when `references` is None; `[]` for none).

    Accuracies in rows are percentages; references are given in percent already.
    """
    rows = [_run_row(run) for run in runs]
    rows.sort(key=lambda row: KINDS.index(row["kind"]))  # stable: input order within a kind
    refs = PAPER_REFERENCES if references is None else references
    return rows + [_reference_row(reference) for reference in refs]


# ---- files --------------------------------------------------------------------------------------


def _cell(row: dict, column: str) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column in _FORMATS and isinstance(value, (int, float)):
        return format(value, _FORMATS[column])
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(_HEADERS[c] for c in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(_cell(row, c) for c in columns) + " |" for row in rows]
    return lines


def results_markdown(rows: Sequence[dict]) -> str:
    """`results.md` text: measured and baseline rows, then the references in their own section."""
    measured = [row for row in rows if row["kind"] != "reference"]
    references = [row for row in rows if row["kind"] == "reference"]
    lines = ["# Results", "", "Measured in this project. Accuracies in percent.", ""]
    lines += _markdown_table(measured, _MEASURED_COLUMNS) if measured else ["No runs recorded."]
    if references:
        lines += ["", "## Published reference numbers (not measured here)", ""]
        lines += [
            "Quoted from their sources, on the dataset named; not comparable run for run.",
            "",
        ]
        lines += _markdown_table(references, _REFERENCE_COLUMNS)
    return "\n".join(lines) + "\n"


def _write_csv(rows: Sequence[dict], path: Path) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in COLUMNS})


def _plot_accuracy(ax: Any, rows: Sequence[dict]) -> None:
    names = [row["name"] for row in rows]
    positions = range(len(rows))
    for offset, column, label in ((-0.2, "probe_top1", "linear probe"), (0.2, "knn_top1", "kNN")):
        values = [math.nan if row[column] is None else row[column] for row in rows]
        bars = ax.bar([p + offset for p in positions], values, width=0.4, label=label)
        texts = ["" if math.isnan(v) else f"{v:.1f}" for v in values]
        ax.bar_label(bars, labels=texts, fontsize=7)
    ax.set_xticks(list(positions), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Frozen-feature accuracy (measured)")
    ax.legend(fontsize=8)


def _plot_losses(ax: Any, loss_curves: dict[str, tuple[Sequence, Sequence]]) -> None:
    for name, (steps, losses) in loss_curves.items():
        ax.plot(list(steps), list(losses), label=name)
    if all(v > 0 for _, losses in loss_curves.values() for v in losses):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)


def _write_figure(rows: Sequence[dict], path: Path, loss_curves: dict | None) -> None:
    measured = [row for row in rows if row["kind"] != "reference"]
    panels = 2 if loss_curves else 1
    # Figure without pyplot: no global backend state, safe in workers and tests (Agg canvas).
    fig = Figure(figsize=(6 * panels, 4.5), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if measured:
        _plot_accuracy(axes[0], measured)
    else:
        axes[0].text(0.5, 0.5, "no measured runs", ha="center", va="center")
        axes[0].set_axis_off()
    if loss_curves:
        _plot_losses(axes[1], loss_curves)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def write_report(
    rows: Sequence[dict],
    out_dir: str | Path,
    *,
    loss_curves: dict[str, tuple[Sequence, Sequence]] | None = None,
) -> dict[str, Path]:
    """Write `results.md`, `results.csv` and `results.png` under `out_dir`, each atomically.

    `rows` come from `build_results`; `loss_curves` maps a run name to `(steps, losses)` and
    adds a loss panel to the figure. Returns `{"markdown", "csv", "png"}` → path.
    """
    out_dir = Path(out_dir)
    paths = {
        "markdown": out_dir / "results.md",
        "csv": out_dir / "results.csv",
        "png": out_dir / "results.png",
    }
    write_text(paths["markdown"], results_markdown(rows))
    _write_csv(rows, paths["csv"])
    _write_figure(rows, paths["png"], loss_curves)
    return paths


# ---- records of evaluated encoders ----------------------------------------------------------

_RUN_NAMES = {"pretrained": "pretrained", "random": "random init", "pixels": "raw pixels"}


def architecture_name(model_args: dict | None) -> str:
    """`ViT-B/16` for the standard sizes, `ViT-48x2/4` (width x depth / patch) otherwise."""
    if not model_args or "embed_dim" not in model_args:
        return ""
    sizes = (model_args["embed_dim"], model_args["depth"], model_args["num_heads"])
    patch = model_args["patch_size"]
    for name, known in MODEL_SIZES.items():
        if known == sizes:
            return f"ViT-{name.split('_')[1][0].upper()}/{patch}"
    return f"ViT-{sizes[0]}x{sizes[1]}/{patch}"


def run_records(results: dict[str, dict], summary: dict | None = None) -> list[dict]:
    """`jepa.report` run records for each evaluated encoder kind in `results`."""
    records = []
    for kind in ENCODER_KINDS:
        if kind not in results:
            continue
        metrics = results[kind]
        features = metrics.get("features") or {}
        dataset = features.get("dataset")
        record = {
            "name": f"{_RUN_NAMES[kind]} {architecture_name(features.get('model_args'))}".strip(),
            "kind": "measured" if kind == "pretrained" else "baseline",
            "dataset": "imagenet1k" if dataset == "imagenet" else dataset,
            "probe_top1": metrics["top1"],
            "probe_top5": metrics.get("top5"),
            "knn_top1": metrics["knn_top1"],
        }
        if kind == "pretrained" and summary:
            for key in ("epochs", "wall_time_s", "images_per_s", "final_loss", "effective_rank"):
                record[key] = summary.get(key)
        records.append(record)
    return records


def write_results(
    results: dict[str, dict],
    out_dir: Path,
    *,
    summary: dict | None = None,
    run: RunFiles | None = None,
) -> dict[str, str]:
    """Write `results.md/.csv/.png` under `out_dir`; published references are added only
    for their own dataset; `run`'s loss curve is drawn. Returns `{"markdown", "csv", "png"}`
    → path (as strings)."""
    curve = run.loss_curve() if run is not None else None
    return _write_table(
        run_records(results, summary), out_dir, {"pretraining": curve} if curve else {}
    )


def _write_table(
    records: list[dict], out_dir: Path, loss_curves: dict, *, references: bool = True
) -> dict[str, str]:
    """Rows from `records` plus the published references of their datasets, written out."""
    datasets = {record["dataset"] for record in records}
    refs = [r for r in PAPER_REFERENCES if references and r.get("dataset") in datasets]
    rows = build_results(records, references=refs)
    paths = write_report(rows, out_dir, loss_curves=loss_curves or None)
    return {name: str(path) for name, path in paths.items()}


def collect_results(path: str | Path) -> dict[str, dict]:
    """Probe metrics by encoder kind from an `evaluate` output directory (its
    `probe/*.json`) or from one probe JSON file (`probe(..., out_file)`)."""
    path = Path(path)
    files = sorted((path / "probe").glob("*.json")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(
            f"{path} is neither a probe metrics file nor an evaluation directory with "
            f"probe/*.json; run `jepa eval` or `jepa probe --out FILE` first"
        )
    results = {}
    for file in files:
        metrics = json.loads(file.read_text())
        if "top1" not in metrics or "knn_top1" not in metrics:
            raise ValueError(f"{file} holds no probe metrics (top1, knn_top1)")
        kind = (metrics.get("features") or {}).get("kind") or file.stem
        results[kind if kind in ENCODER_KINDS else "pretrained"] = metrics
    return results


def report_evaluations(
    inputs: Sequence[tuple[str | None, Path]], out_dir: Path, *, references: bool = True
) -> dict[str, str]:
    """One results table over several evaluations.

    `inputs` are `(name, path)` pairs, `path` as `collect_results` takes it; `name` (or, with
    several inputs, the path's name) prefixes that input's rows. Training summaries and loss
    curves come from the run that produced each pretrained checkpoint, when it is on disk.
    """
    records, curves = [], {}
    for name, path in inputs:
        results = collect_results(path)
        prefix = name or (Path(path).name if len(inputs) > 1 else None)
        checkpoint = (results.get("pretrained", {}).get("features") or {}).get("checkpoint")
        run = RunFiles.holding(checkpoint) if checkpoint else None
        summary = run.read_summary() if run is not None else None
        for record in run_records(results, summary):
            records.append(
                {**record, "name": f"{prefix}: {record['name']}" if prefix else record["name"]}
            )
        if run is not None and (curve := run.loss_curve()) is not None:
            curves[prefix or "pretraining"] = curve
    return _write_table(records, Path(out_dir), curves, references=references)
