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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from jepa.config import JEPAConfig
from jepa.device import resolve_device
from jepa.features import META_FILE, extract_dataset_features, load_features
from jepa.io import write_json
from jepa.runs import RunFiles

log = logging.getLogger("jepa.evaluate")

KINDS = ("pretrained", "pixels", "random")
PIXEL_MAX_SIDE = 32  # the raw-pixel baseline pools larger images down to this side
SEED_CHECKPOINT_NAME = "checkpoint.pth"  # the seed document's `./output/checkpoint.pth`


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
    if not path.exists() and path.name == SEED_CHECKPOINT_NAME and _holds_a_run(path.parent):
        log.info("%s does not exist; using the run in %s", path, path.parent)
        path = path.parent
    if path.is_dir() and _holds_a_run(path):
        run = RunFiles(path)
        return run.encoder if run.has_encoder() else run.checkpoint
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass a training output_dir, its encoder/ "
            f"export, a checkpoint file, or an official I-JEPA .pth.tar"
        )
    return path


def _holds_a_run(path: Path) -> bool:
    run = RunFiles(path)
    return run.has_encoder() or run.checkpoint.is_file()


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
    from jepa.report import write_results

    run = RunFiles.holding(encoder_path)
    if summary is None and run is not None:
        summary = run.read_summary()
    write_json(out_dir / "metrics.json", headline(results))
    results["report"] = write_results(results, out_dir, summary=summary, run=run)
    return results


# ---- results ---------------------------------------------------------------------------------


# The top-line numbers; the bookkeeping (n_train, n_test, feature_dim, val_top1, the
# protocol) stays in each encoder's full probe record.
HEADLINE_KEYS = ("top1", "top5", "knn_top1")


def headline(results: dict[str, dict]) -> dict[str, dict]:
    """Top-line numbers per encoder kind (for `evaluate`'s `metrics.json`)."""
    keys = HEADLINE_KEYS
    return {
        kind: {k: metrics.get(k) for k in keys if k in metrics}
        for kind, metrics in results.items()
        if kind in KINDS
    }
