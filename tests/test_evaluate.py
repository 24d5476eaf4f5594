"""Evaluation orchestration (`jepa.evaluate`) on a tiny Fashion-MNIST written by the test.

Also home of the tiny-data helpers that `test_api.py` and `test_cli.py` import.
"""

from __future__ import annotations

import csv
import gzip
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny import tiny_config

from jepa.checkpoint import CheckpointError
from jepa.config import JEPAConfig
from jepa.evaluate import (
    PixelEncoder,
    evaluate,
    extract,
    load_pretrained,
    probe,
    resolve_checkpoint,
)
from jepa.features import load_features
from jepa.report import collect_results, report_evaluations

# Beyond `debug=tiny` (tests/tiny.py): 2 blocks of width 48 on 4x4 patches, batch 16.
TINY = dict(embed_dim=48, num_heads=3, pred_embed_dim=24, pred_num_heads=3, batch_size=16,
            eval_batch_size=64)  # fmt: skip
NUM_CLASSES = 4


def write_idx(path: Path, array: np.ndarray) -> None:
    """Gzipped IDX: 0x0000, type 0x08 (uint8), ndim, big-endian uint32 dims, raw bytes."""
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_tiny_fmnist(root: Path, num_train: int = 48, num_test: int = 24) -> Path:
    """Fashion-MNIST IDX files under `root/raw`: class c is a bright quadrant c on noise,
    so a linear probe on good features (or pixels) separates the classes. Returns `root`."""
    raw = root / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        labels = np.arange(n) % NUM_CLASSES
        images = rng.integers(0, 60, (n, 28, 28))
        for image, label in zip(images, labels, strict=True):
            row, col = divmod(int(label), 2)
            image[row * 14 : (row + 1) * 14, col * 14 : (col + 1) * 14] += 180
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_fields(tmp: Path, **overrides) -> dict:
    """The fields of the tiny config (`tiny_config` + `TINY`, data under `tmp/data`, written
    if missing, outputs in `tmp/out`) that differ from `JEPAConfig()`'s defaults: what a
    user would pass to `create_model` or the CLI to get it."""
    root = tmp / "data"
    if not (root / "raw").is_dir():
        write_tiny_fmnist(root)
    values = tiny_config(**TINY, root_path=str(root), output_dir=str(tmp / "out"), **overrides)
    defaults = JEPAConfig().to_dict()
    return {k: v for k, v in values.to_dict().items() if v != defaults[k]}


def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[JEPAConfig, Path]:
    """One tiny pretraining run per session (seed quick start: `create_model(...).train()`),
    shared by the modules that need a trained encoder. Returns (config, output_dir)."""
    import torchwm

    base = tmp_path_factory.getbasetemp() / "shared-run"
    base.mkdir(exist_ok=True)
    agent = torchwm.create_model("jepa", **tiny_fields(base))
    if not (base / "out" / "summary.json").is_file():
        agent.train()
    return agent.cfg, Path(agent.cfg.output_dir)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[JEPAConfig, Path]:
    return trained_run(tmp_path_factory)


@pytest.fixture(scope="module")
def evaluated(run, tmp_path_factory) -> tuple[JEPAConfig, Path, dict]:
    cfg, run_dir = run
    out = tmp_path_factory.mktemp("eval")
    return cfg, out, evaluate(cfg, run_dir, out)


# ---- evaluate ----------------------------------------------------------------------------------


def test_evaluate_writes_three_feature_sets(evaluated):
    cfg, out, _ = evaluated
    dims = {"pretrained": cfg.embed_dim, "random": cfg.embed_dim, "pixels": 28 * 28}
    hashes = {}
    for kind, dim in dims.items():
        train_x, train_y = load_features(out / "features" / kind, "train")
        test_x, test_y = load_features(out / "features" / kind, "test")
        assert train_x.shape == (48, dim) and test_x.shape == (24, dim)
        assert np.isfinite(train_x).all()
        assert sorted(np.unique(test_y)) == list(range(NUM_CLASSES))
        meta = json.loads((out / "features" / kind / "features.json").read_text())
        assert meta["kind"] == kind
        hashes[kind] = meta["encoder_weights_hash"]
    assert hashes["pretrained"] != hashes["random"]  # the baseline really is untrained
    pretrained_meta = json.loads((out / "features/pretrained/features.json").read_text())
    assert pretrained_meta["checkpoint"].endswith("encoder")  # the run's export was used
    assert pretrained_meta["checkpoint_hash"] == cfg.training_hash()


def test_evaluate_writes_probe_metrics_and_table(evaluated):
    _, out, results = evaluated
    assert set(results) == {"pretrained", "pixels", "random", "report"}
    for kind in ("pretrained", "pixels", "random"):
        saved = json.loads((out / "probe" / f"{kind}.json").read_text())
        assert saved["top1"] == results[kind]["top1"]
        assert 0 <= saved["top1"] <= 1 and 0 <= saved["knn_top1"] <= 1
        assert saved["n_train"] == 48 and saved["n_test"] == 24
        assert "held-out" in saved["protocol"]
    # The quadrant classes are linearly separable in pixel space: far above chance (25%).
    assert results["pixels"]["top1"] >= 0.9
    headline = json.loads((out / "metrics.json").read_text())
    assert headline["pixels"]["top1"] == results["pixels"]["top1"]
    table = (out / "results.md").read_text()
    for name in ("pretrained ViT-48x2/4", "raw pixels", "random init ViT-48x2/4"):
        assert name in table
    assert "Published reference" not in table  # ImageNet numbers only beside ImageNet runs
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["kind"] for r in rows] == ["measured", "baseline", "baseline"]
    assert rows[0]["epochs"] and rows[0]["final_loss"]  # training summary joined in
    assert (out / "results.png").stat().st_size > 0
    assert results["report"]["markdown"] == str(out / "results.md")


def test_report_combines_evaluations(evaluated, tmp_path):
    _, out, results = evaluated
    paths = report_evaluations(
        [("tiny", out), (None, out / "probe" / "pixels.json")], tmp_path, references=False
    )
    table = Path(paths["markdown"]).read_text()
    assert "tiny: pretrained ViT-48x2/4" in table and "pixels.json: raw pixels" in table
    assert collect_results(out)["random"]["top1"] == results["random"]["top1"]
    with pytest.raises(FileNotFoundError, match="probe"):
        collect_results(tmp_path / "nothing")


# ---- extract / probe ----------------------------------------------------------------------------


def test_random_baseline_is_seeded_and_shares_the_architecture(run, tmp_path):
    cfg, run_dir = run
    cfg = cfg.replace(depth=1, embed_dim=24, seed=3)  # differs from the trained encoder
    first = extract(cfg, run_dir, tmp_path / "a", kind="random")
    extract(cfg, run_dir, tmp_path / "b", kind="random")
    assert first["model_args"]["embed_dim"] == 48  # from the checkpoint, not the config
    a, b = (load_features(tmp_path / d, "test")[0] for d in "ab")
    np.testing.assert_array_equal(a, b)
    alone = extract(cfg, None, tmp_path / "c", kind="random")  # no checkpoint: the config's
    assert alone["model_args"]["embed_dim"] == 24 and alone["architecture_from"] == "config"
    metrics = probe(cfg, tmp_path / "c", tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["knn_top1"] == metrics["knn_top1"]
    with pytest.raises(ValueError, match="kind"):
        extract(cfg, None, tmp_path / "d", kind="mae")
    with pytest.raises(ValueError, match="read_checkpoint"):
        extract(cfg, None, tmp_path / "d", kind="pretrained")


def test_pixel_encoder_flattens_small_and_pools_large_images():
    small = torch.randn(2, 1, 28, 28)
    assert torch.equal(PixelEncoder().forward_features(small), small.flatten(1))
    large = torch.randn(2, 3, 224, 224)
    pooled = PixelEncoder().forward_features(large)
    assert pooled.shape == (2, 3 * 32 * 32)
    assert torch.allclose(pooled[:, 0], large[:, 0, :7, :7].mean((-1, -2)), atol=1e-6)


# ---- checkpoints --------------------------------------------------------------------------------


def test_resolve_checkpoint_accepts_run_export_file_and_seed_path(run, tmp_path):
    _, run_dir = run
    assert resolve_checkpoint(run_dir) == run_dir / "encoder"
    assert resolve_checkpoint(run_dir / "checkpoint.pth") == run_dir / "encoder"  # seed's path
    latest = run_dir / "checkpoints" / "latest.pt"
    assert resolve_checkpoint(latest) == latest
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "checkpoint.pth")  # no run there: no guessing
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(run_dir / "chekpoint.pt")


def test_load_pretrained_checks_channels(run, tmp_path):
    cfg, run_dir = run
    encoder = load_pretrained(cfg, run_dir / "checkpoints" / "latest.pt")
    assert encoder.model_args()["embed_dim"] == cfg.embed_dim
    with pytest.raises(ValueError, match="in_chans=1"):
        load_pretrained(cfg.replace(in_chans=3), run_dir)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_pretrained(cfg, garbage)


# ---- one meaning of pretrain_subset -------------------------------------------------------------


def test_api_cli_and_dvc_stages_evaluate_the_same_images(tmp_path, monkeypatch, capsys):
    """For one params file with `pretrain_subset` set, the Python API, `jepa eval --config`
    and the DVC stage mains (extract, baselines) extract and probe the same images: the
    whole test split and `probe_subset` of the whole train split."""
    import pipelines.baselines
    import pipelines.extract
    from jepa import cli
    from jepa.evaluate import random_encoder
    from jepa.export import export_encoder

    cfg = JEPAConfig.from_dict(tiny_fields(tmp_path, pretrain_subset=16, probe_subset=40))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**cfg.to_dict(), "nproc": 1}))
    encoder = export_encoder(random_encoder(cfg), tmp_path / "encoder")  # no pretraining needed

    api = evaluate(JEPAConfig.from_yaml(params), encoder, tmp_path / "api")
    argv = ["eval", "--config", str(params), "--read_checkpoint", str(encoder)]
    assert cli.main([*argv, "--out", str(tmp_path / "cli")]) == 0
    stage = {"--params": params, "--encoder": encoder, "--out": tmp_path / "stage"}
    monkeypatch.setattr(sys, "argv", ["extract", *(str(w) for kv in stage.items() for w in kv)])
    pipelines.extract.main()
    paths = {"--pixels": tmp_path / "pixels.json", "--random": tmp_path / "random.json"}
    words = ["--params", params, *(w for kv in paths.items() for w in kv), "--metrics", "m.json"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["baselines", *map(str, words)])
    pipelines.baselines.main()

    for split, rows in (("train", 40), ("test", 24)):
        want_x, want_y = load_features(tmp_path / "api" / "features" / "pretrained", split)
        assert len(want_y) == rows
        for other in (tmp_path / "cli" / "features" / "pretrained", tmp_path / "stage"):
            x, y = load_features(other, split)
            np.testing.assert_array_equal(y, want_y)
            np.testing.assert_array_equal(x, want_x)
    for kind in ("pixels", "random"):
        records = [
            api[kind],
            json.loads((tmp_path / "cli" / "probe" / f"{kind}.json").read_text()),
            json.loads(paths[f"--{kind}"].read_text()),
        ]
        assert {(r["n_train"], r["n_test"], r["top1"], r["knn_top1"]) for r in records} == {
            (40, 24, api[kind]["top1"], api[kind]["knn_top1"])
        }
