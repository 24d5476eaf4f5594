"""Evaluation orchestration: features of a frozen encoder, probes on them, a results table.

One function per step, shared by the Python API, the CLI, the DVC stages and the Prefect
flows:

- `extract(cfg, encoder_path, out_dir, kind=...)` writes the train/test features of
  `cfg.dataset` (`jepa.features` layout: `{split}_features.npy`, `{split}_labels.npy`,
  `features.json`) for one of three encoders:
  ``pretrained`` (the checkpoint at `encoder_path`), ``random`` (the same architecture,
  initialised with `cfg.seed` and never trained) or ``pixels`` (the normalised eval images
  themselves, flattened; images larger than `PIXEL_MAX_SIDE` are average-pooled down first
  so that an ImageNet baseline stays a few thousand dimensions).
- `probe(cfg, feature_dir, out_file)` runs the linear probe (`cfg.probe_backend`, protocol
  in `jepa.probe`) and the k-NN classifier (`cfg.knn_k`) on saved features.
- `evaluate(cfg, encoder_path, out_dir)` does both for the pretrained encoder and the two
  baselines and writes the results table (`jepa.report`).

Layout written by `evaluate` under `out_dir`::

    features/{pretrained,pixels,random}/   features of each encoder
    probe/{pretrained,pixels,random}.json  metrics of each encoder
    metrics.json                           top-line numbers of every encoder
    results.md, results.csv, results.png   the table (jepa.report)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jepa.config import MODEL_SIZES, JEPAConfig
from jepa.features import (
    META_FILE,
    extract_dataset_features,
    load_features,
    resolve_device,
)
from jepa.io import write_json

log = logging.getLogger("jepa.evaluate")

KINDS = ("pretrained", "pixels", "random")
PIXEL_MAX_SIDE = 32  # the raw-pixel baseline pools larger images down to this side
SEED_CHECKPOINT_NAME = "checkpoint.pth"  # the seed document's `./output/checkpoint.pth`

_RUN_NAMES = {"pretrained": "pretrained", "random": "random init", "pixels": "raw pixels"}


# ---- encoders --------------------------------------------------------------------------------


class PixelEncoder(nn.Module):
    """The raw-pixel "encoder": images `(B, C, H, W)` → `(B, C*h*w)` with `h, w <= max_side`.

    Images no larger than `max_side` pass unchanged (flattened); larger ones are
    average-pooled to at most `max_side` per side first.
    """

    def __init__(self, max_side: int = PIXEL_MAX_SIDE):
        super().__init__()
        self.max_side = max_side

    def model_args(self) -> dict:
        return {"kind": "pixels", "max_side": self.max_side}

    def forward_features(self, x: torch.Tensor, num_last_blocks: int = 1) -> torch.Tensor:
        """`(B, C, H, W)` → `(B, C*h*w)`; `num_last_blocks` is ignored (encoder interface)."""
        if max(x.shape[-2:]) > self.max_side:
            h, w = (min(s, self.max_side) for s in x.shape[-2:])
            x = F.adaptive_avg_pool2d(x, (h, w))
        return x.flatten(1)


def random_encoder(cfg: JEPAConfig, model_args: dict | None = None) -> nn.Module:
    """An untrained encoder seeded with `cfg.seed`: `VisionTransformer(**model_args)`, or
    `build_encoder(cfg)` without them. The global RNG state is left untouched."""
    from jepa.models import VisionTransformer, build_encoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder = VisionTransformer(**model_args) if model_args else build_encoder(cfg)
    return encoder.eval()


def resolve_checkpoint(path: str | Path) -> Path:
    """The file or export directory that `jepa.export.load_encoder` should read.

    Accepts an export dir, a checkpoint file, or a training run's `output_dir` (its
    `encoder/` export, else `checkpoints/latest.pt`). The seed document's
    `<output_dir>/checkpoint.pth`, when absent, means that run's output directory.
    """
    from jepa.checkpoint import CheckpointError

    path = Path(path).expanduser()
    if not path.exists() and path.name == SEED_CHECKPOINT_NAME and _is_run_dir(path.parent):
        log.info("%s does not exist; using the run in %s", path, path.parent)
        path = path.parent
    if path.is_dir() and _is_run_dir(path):
        export = path / "encoder"
        return export if (export / "encoder.json").is_file() else path / "checkpoints" / "latest.pt"
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a training output_dir, its encoder/ "
            f"export, a checkpoint file, or an official I-JEPA .pth.tar"
        )
    return path


def _is_run_dir(path: Path) -> bool:
    return (path / "encoder" / "encoder.json").is_file() or (
        path / "checkpoints" / "latest.pt"
    ).is_file()


def load_pretrained(cfg: JEPAConfig, encoder_path: str | Path) -> nn.Module:
    """The target encoder at `encoder_path` (see `resolve_checkpoint`), checked against
    `cfg`'s image channels and size."""
    from jepa.export import load_encoder

    encoder = load_encoder(resolve_checkpoint(encoder_path))
    args = encoder.model_args()
    if args["in_chans"] != cfg.in_chans:
        raise ValueError(
            f"the encoder at {encoder_path} takes in_chans={args['in_chans']} but the config "
            f"has in_chans={cfg.in_chans}; evaluate with the training config (in_chans="
            f"{args['in_chans']}, dataset, image_size)"
        )
    if cfg.image_size % args["patch_size"]:
        raise ValueError(
            f"image_size={cfg.image_size} is not a multiple of the encoder's patch size "
            f"{args['patch_size']} ({encoder_path})"
        )
    return encoder


def _checkpoint_meta(encoder_path: str | Path | None) -> dict[str, Any]:
    """Where the weights came from, and the training config hash when an export records it."""
    if encoder_path is None:
        return {"checkpoint": None, "checkpoint_hash": None}
    path = resolve_checkpoint(encoder_path)
    info = path / "encoder.json" if path.is_dir() else path.with_suffix(".json")
    config_hash = None
    if info.is_file():
        config_hash = json.loads(info.read_text()).get("config_hash")
    return {"checkpoint": str(path), "checkpoint_hash": config_hash}


# ---- steps -----------------------------------------------------------------------------------


def extract(
    cfg: JEPAConfig, encoder_path: Path | None, out_dir: Path, *, kind: str = "pretrained"
) -> dict:
    """Write train/test features of `cfg.dataset` for one encoder `kind` to `out_dir`.

    `kind`: "pretrained" loads `encoder_path`; "random" builds the same architecture as
    `encoder_path` (or `build_encoder(cfg)` without one) seeded with `cfg.seed`; "pixels"
    uses the images (`PixelEncoder`). Returns the features metadata (`features.json`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(map(repr, KINDS))}")
    if kind == "pretrained" and encoder_path is None:
        raise ValueError("kind='pretrained' needs an encoder_path (set read_checkpoint)")
    encoder = None
    if encoder_path is not None and kind != "pixels":
        encoder_path = resolve_checkpoint(encoder_path)
        encoder = load_pretrained(cfg, encoder_path)
    return _extract_with(cfg, _baseline(cfg, kind, encoder), Path(out_dir), kind, encoder_path)


def _baseline(cfg: JEPAConfig, kind: str, pretrained: nn.Module | None) -> nn.Module:
    if kind == "pixels":
        return PixelEncoder()
    if kind == "random":
        return random_encoder(cfg, pretrained.model_args() if pretrained is not None else None)
    return pretrained


def _extract_with(
    cfg: JEPAConfig, encoder: nn.Module, out_dir: Path, kind: str, encoder_path: Path | None
) -> dict:
    meta = {"kind": kind, **_checkpoint_meta(encoder_path if kind == "pretrained" else None)}
    if kind == "random":  # untrained: the checkpoint only lent its architecture
        meta.update(init_seed=cfg.seed, architecture_from=str(encoder_path or "config"))
    start = time.perf_counter()
    record = extract_dataset_features(cfg, encoder, out_dir, meta=meta)
    log.info("%s features in %s (%.1fs)", kind, out_dir, time.perf_counter() - start)
    return record


def probe(cfg: JEPAConfig, feature_dir: Path, out_file: Path | None = None) -> dict:
    """Linear-probe (`cfg.probe_backend`) and k-NN (`cfg.knn_k`) metrics of the features in
    `feature_dir`; written as JSON to `out_file` (atomically) when given.

    Keys: those of `jepa.probe.linear_probe` (top1, top5, protocol, ...), plus knn_top1,
    knn_k, knn_temperature, seconds, and `features` (the extraction metadata).
    """
    from jepa.probe import knn_accuracy, linear_probe

    feature_dir = Path(feature_dir)
    train_x, train_y = load_features(feature_dir, "train")
    test_x, test_y = load_features(feature_dir, "test")
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    metrics = linear_probe(
        train_x, train_y, test_x, test_y, backend=cfg.probe_backend, seed=cfg.seed, device=device
    )
    knn = knn_accuracy(train_x, train_y, test_x, test_y, k=cfg.knn_k, device=device)
    metrics.update(knn_top1=knn["knn_top1"], knn_k=knn["k"], knn_temperature=knn["temperature"])
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    meta_path = feature_dir / META_FILE
    metrics["features"] = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if out_file is not None:
        write_json(Path(out_file), metrics)
    return metrics


def evaluate(
    cfg: JEPAConfig,
    encoder_path: Path,
    out_dir: Path,
    *,
    baselines: bool = True,
    summary: dict | None = None,
) -> dict:
    """Extract and probe the pretrained encoder (and the raw-pixel and random-init
    baselines), then write the results table. See the module docstring for the layout.

    `summary` is the training summary (`jepa.train.pretrain`); by default it is read from
    the run directory holding `encoder_path`, when there is one. Returns
    `{"pretrained": metrics, "pixels": ..., "random": ..., "report": {name: path}}`.
    """
    out_dir = Path(out_dir)
    encoder_path = resolve_checkpoint(encoder_path)
    pretrained = load_pretrained(cfg, encoder_path)
    results: dict[str, Any] = {}
    for kind in KINDS if baselines else ("pretrained",):
        encoder = _baseline(cfg, kind, pretrained)
        _extract_with(cfg, encoder, out_dir / "features" / kind, kind, encoder_path)
        results[kind] = probe(cfg, out_dir / "features" / kind, out_dir / "probe" / f"{kind}.json")
    run_dir = run_directory(encoder_path)
    if summary is None and run_dir is not None and (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    write_json(out_dir / "metrics.json", headline(results))
    results["report"] = write_results(results, out_dir, summary=summary, run_dir=run_dir)
    return results


# ---- results ---------------------------------------------------------------------------------


def headline(results: dict[str, dict]) -> dict[str, dict]:
    """Top-line numbers per encoder kind (for `metrics.json` / `dvc metrics show`)."""
    keys = ("top1", "top5", "knn_top1", "val_top1", "n_train", "n_test", "feature_dim")
    return {
        kind: {k: metrics.get(k) for k in keys if k in metrics}
        for kind, metrics in results.items()
        if kind in KINDS
    }


def run_directory(encoder_path: str | Path) -> Path | None:
    """The training output directory holding `encoder_path` (its `encoder/` export or its
    `checkpoints/latest.pt`), or None when the encoder does not come from a run."""
    path = resolve_checkpoint(encoder_path)
    if path.name == "encoder" and path.is_dir():
        run = path.parent
    elif path.parent.name == "checkpoints":
        run = path.parent.parent
    else:
        return None
    return run if (run / "summary.json").is_file() or (run / "metrics.jsonl").is_file() else None


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
    for kind in KINDS:
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


def loss_curve(run_dir: Path | None) -> tuple[list[int], list[float]] | None:
    """`(steps, losses)` from a run's `metrics.jsonl`, or None without one."""
    path = None if run_dir is None else run_dir / "metrics.jsonl"
    if path is None or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [row for row in rows if "loss" in row]
    return ([row["step"] for row in rows], [row["loss"] for row in rows]) if rows else None


def write_results(
    results: dict[str, dict],
    out_dir: Path,
    *,
    summary: dict | None = None,
    run_dir: Path | None = None,
) -> dict[str, str]:
    """Write `results.md/.csv/.png` under `out_dir`; published references are added only
    for their own dataset. Returns `{"markdown", "csv", "png"}` → path (as strings)."""
    curve = loss_curve(run_dir)
    return _write_table(
        run_records(results, summary), out_dir, {"pretraining": curve} if curve else {}
    )


def _write_table(
    records: list[dict], out_dir: Path, loss_curves: dict, *, references: bool = True
) -> dict[str, str]:
    """Rows from `records` plus the published references of their datasets, written out."""
    from jepa.report import PAPER_REFERENCES, build_results, write_report

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
        results[kind if kind in KINDS else "pretrained"] = metrics
    return results


def report(
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
        run_dir = run_directory(checkpoint) if checkpoint and Path(checkpoint).exists() else None
        summary = None
        if run_dir is not None and (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
        for record in run_records(results, summary):
            records.append(
                {**record, "name": f"{prefix}: {record['name']}" if prefix else record["name"]}
            )
        if (curve := loss_curve(run_dir)) is not None:
            curves[prefix or "pretraining"] = curve
    return _write_table(records, Path(out_dir), curves, references=references)
