"""The seed document's Python API: `torchwm.create_model`, `JEPAAgent`, `JEPAConfig`.

The seed's snippets name ViT-B/16 on ImageNet for 100 epochs, which no CPU test can run.
Each snippet therefore runs twice: verbatim (only the dataset path changed) with
`pretrain` replaced by a recorder, which checks what the API hands to training; and for
real on a tiny Fashion-MNIST, which checks the whole path down to the files written.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_evaluate import trained_run

import jepa
import jepa.train
import torchwm
from jepa.config import ConfigError, JEPAConfig
from jepa.runs import RunFiles


@pytest.fixture
def recorded(monkeypatch) -> list[JEPAConfig]:
    """Replace `jepa.train.pretrain` by a recorder of the configs it is called with."""
    calls: list[JEPAConfig] = []

    def fake_pretrain(cfg: JEPAConfig, **_) -> dict:
        calls.append(cfg)
        return {"steps": 0}

    monkeypatch.setattr(jepa.train, "pretrain", fake_pretrain)
    return calls


# ---- the seed's snippets, verbatim ----------------------------------------------------------


def test_seed_quick_start_verbatim(recorded, tmp_path):
    agent = torchwm.create_model(
        "jepa",
        dataset="imagenet",
        root_path=str(tmp_path),  # the only change: where the dataset is
        batch_size=64,
        epochs=100,
    )
    assert agent.train() == {"steps": 0}
    (cfg,) = recorded
    assert cfg.dataset_name == "imagenet1k" and (cfg.batch_size, cfg.epochs) == (64, 100)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size) == (768, 12, 12, 16)


def test_seed_config_snippet_verbatim(recorded, tmp_path):
    from torchwm import JEPAAgent, JEPAConfig

    cfg = JEPAConfig()
    cfg.dataset = "imagenet1k"
    cfg.root_path = str(tmp_path)  # "/data/imagenet" in the seed
    cfg.image_folder = "train"
    cfg.batch_size = 64
    cfg.epochs = 100
    cfg.lr = 1.5e-4
    agent = JEPAAgent(cfg)
    agent.train()
    assert recorded == [cfg]
    assert (cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.weight_decay) == (1.5e-4, 1e-6, 40, 0.05)
    assert (cfg.clip_grad, cfg.accum_iter, cfg.ema, cfg.mask_ratio) == (1.0, 1, (0.996, 1.0), 0.75)


def test_seed_data_pipeline_snippets_verbatim(recorded, tmp_path):
    cfg = JEPAConfig()
    cfg.dataset = "imagenet1k"
    cfg.root_path = str(tmp_path)
    cfg.dataset = "imagefolder"
    cfg.root_path = str(tmp_path / "my_dataset")
    cfg.image_folder = "train"
    torchwm.JEPAAgent(cfg).train()
    cfg.dataset = "cifar10"
    cfg.download = True
    torchwm.JEPAAgent(cfg).train()
    assert [c.dataset for c in recorded] == ["cifar10", "cifar10"]  # the agent keeps cfg
    cfg.dataset = "mnist"  # types are checked on assignment, choices when training starts
    with pytest.raises(ConfigError, match="dataset='mnist'"):
        torchwm.JEPAAgent(cfg).train()


# ---- the snippets for real, tiny --------------------------------------------------------------


def test_quick_start_trains_then_evaluates_via_seed_eval_flag(tmp_path_factory, capsys):
    cfg, run_dir = trained_run(tmp_path_factory)  # torchwm.create_model("jepa", ...).train()
    for name in ("checkpoints/latest.pt", "encoder/encoder.safetensors", "summary.json"):
        assert (run_dir / name).is_file(), name
    agent = torchwm.JEPAAgent(cfg)
    cfg.eval = True
    cfg.read_checkpoint = str(run_dir / "checkpoint.pth")  # the seed's path
    metrics = agent.train()
    assert {"pretrained", "pixels", "random", "report"} <= set(metrics)
    assert 0 <= metrics["pretrained"]["top1"] <= 1
    assert Path(metrics["report"]["markdown"]).is_file()
    assert Path(metrics["report"]["markdown"]).parent == run_dir / "eval"
    assert "linear probe top-1" in capsys.readouterr().out
    encoder = agent.load_encoder()
    assert encoder.model_args()["embed_dim"] == cfg.embed_dim


# Two steps on two flat classes: the collapse monitor rightly warns; this test is about the data path.
@pytest.mark.filterwarnings("ignore:possible representation collapse")
def test_imagefolder_dataset_trains(tmp_path):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, brightness in (("a", 0), ("b", 150)):
        folder = tmp_path / "my_dataset" / "train" / label
        folder.mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 100, (28, 28, 3)) + brightness
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    agent = torchwm.create_model(
        "jepa", preset="fmnist_w192", dataset="imagefolder", root_path=str(tmp_path / "my_dataset"),
        image_folder="train", model="custom", embed_dim=24, depth=1, num_heads=3,
        pred_embed_dim=12, pred_depth=1, pred_num_heads=3, batch_size=8, epochs=1,
        num_workers=0, progress=False, output_dir=str(tmp_path / "out"), log_every=1,
    )  # fmt: skip
    summary = agent.train()
    # 16 images in batches of 8: one epoch is 2 steps, both logged; RGB files read as grey.
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    losses = [row for row in RunFiles(tmp_path / "out").read_metrics() if "loss" in row]
    assert [row["step"] for row in losses] == [1, 2]
    assert losses[-1]["loss"] == summary["final_loss"]
    encoder = agent.load_encoder()
    assert encoder.model_args()["in_chans"] == 1
    assert encoder.forward_features(torch.zeros(2, 1, 28, 28)).shape == (2, 24)


# ---- errors and the package surface ----------------------------------------------------------


def test_create_model_rejects_unknown_model_and_fields():
    with pytest.raises(ValueError, match="unknown model 'dreamer'"):
        torchwm.create_model("dreamer")
    with pytest.raises(ConfigError, match="batchsize"):
        torchwm.create_model("jepa", batchsize=64)
    with pytest.raises(ConfigError, match="epochs"):
        torchwm.create_model("jepa", epochs="many")
    assert torchwm.create_model("JEPA", dataset="imagenet").cfg.dataset_name == "imagenet1k"


def test_config_rejects_unknown_attributes_and_wrong_types():
    cfg = JEPAConfig()
    with pytest.raises(ConfigError, match="no field 'batchsize'"):
        cfg.batchsize = 64
    with pytest.raises(ConfigError, match="batch_size expects int"):
        cfg.batch_size = "64 images"
    with pytest.raises(ConfigError, match="enc_mask_scale"):
        cfg.enc_mask_scale = 0.2
    cfg.enc_mask_scale = (0.15, 0.2)  # the seed's variant
    assert cfg.enc_mask_scale == (0.15, 0.2)


def test_evaluate_without_a_run_names_the_missing_checkpoint(tmp_path):
    from jepa.checkpoint import CheckpointError

    agent = torchwm.create_model("jepa", output_dir=str(tmp_path / "none"))
    with pytest.raises(CheckpointError, match="does not exist"):
        agent.evaluate()


def test_torchwm_is_an_alias_and_import_is_light():
    assert torchwm.JEPAAgent is jepa.JEPAAgent and torchwm.create_model is jepa.create_model
    assert torchwm.JEPAConfig is jepa.JEPAConfig is JEPAConfig
    code = (
        "import sys, jepa, torchwm; jepa.create_model; "
        "heavy = {'torch', 'dvc', 'prefect', 'sklearn'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
