"""JEPAConfig: one typed schema; bad keys, types and values fail naming the field."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jepa import config
from jepa.config import (
    LATER_TRAINING_FIELDS,
    MODEL_SIZES,
    ConfigError,
    JEPAConfig,
    load_params,
    preset_names,
)


def test_seed_defaults():
    cfg = JEPAConfig()
    assert (cfg.image_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads) == (
        224,
        16,
        768,
        12,
        12,
    )
    assert (cfg.batch_size, cfg.lr, cfg.min_lr, cfg.warmup_epochs) == (64, 1.5e-4, 1e-6, 40)
    assert (cfg.weight_decay, cfg.clip_grad, cfg.epochs, cfg.accum_iter) == (0.05, 1.0, 100, 1)
    assert cfg.ema == (0.996, 1.0) and cfg.mask_ratio == 0.75
    # official-code defaults where the seed disagrees
    assert (
        cfg.enc_mask_scale == (0.85, 1.0)
        and cfg.loss == "smooth_l1"
        and cfg.ema_schedule == "linear"
    )


@pytest.mark.parametrize("name", preset_names())
def test_presets_validate(name):
    assert JEPAConfig.preset(name).validate()


def test_presets_are_the_experiments_and_old_names_say_the_new_ones():
    assert preset_names() == [
        "fmnist_cpu_30min", "fmnist_cpu_32ep", "fmnist_cpu_default", "fmnist_w192",
        "in1k_vith14_ep300", "seed_vitb16",
    ]  # fmt: skip
    assert JEPAConfig.preset("seed-vitb16") == JEPAConfig.preset("seed_vitb16")  # - for _
    cfg = JEPAConfig.preset("fmnist_w192", epochs=3, model="vit_small", patch_size=4)
    assert (cfg.epochs, cfg.embed_dim, cfg.batch_size) == (3, 384, 128)  # overrides as replace
    for old in ("fmnist-tiny", "fmnist_tiny"):
        with pytest.raises(ConfigError, match="'fmnist_w192'.*'fmnist_cpu_default'"):
            JEPAConfig.preset(old)
    with pytest.raises(ConfigError, match="'fmnist_cpu_default'.*'vit_w128_d4'"):
        JEPAConfig.preset("fmnist_small")
    with pytest.raises(
        ConfigError, match="choose one of fmnist_cpu_30min, fmnist_cpu_32ep, fmnist_cpu_default"
    ):
        JEPAConfig.preset("fmnist")


def test_composing_a_preset_leaves_no_global_hydra_state():
    from hydra.core.global_hydra import GlobalHydra

    config._compose.cache_clear()
    JEPAConfig.preset("fmnist_w192")
    assert not GlobalHydra.instance().is_initialized()


def test_without_hydra_presets_say_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "hydra", None)  # `import hydra` fails, as if not installed
    config._compose.cache_clear()
    try:
        with pytest.raises(ConfigError, match="install hydra-core.*flat YAML config"):
            JEPAConfig.preset("fmnist_w192")
    finally:
        config._compose.cache_clear()


def test_the_library_trains_from_a_flat_yaml_without_the_pipeline_packages(tmp_path, tiny_fmnist):
    """Only torch and the numeric packages: no hydra, omegaconf, dvc, prefect or boto3."""
    cfg = JEPAConfig.preset("fmnist_w192").replace(
        root_path=str(tiny_fmnist), embed_dim=32, depth=1, num_heads=2, pred_embed_dim=16,
        pred_depth=1, pred_num_heads=2, batch_size=16, max_steps=1, num_workers=0,
        progress=False, output_dir=str(tmp_path / "out"),
    )  # fmt: skip
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**cfg.to_dict(), "nproc": 1}))
    code = (
        "import sys\n"
        "for name in ('hydra', 'omegaconf', 'dvc', 'dvclive', 'prefect', 'boto3'):\n"
        "    sys.modules[name] = None\n"
        "import jepa.train\n"
        "jepa.train.main(['--config', sys.argv[1]])\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-c", code, str(params)], cwd=root, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "encoder" / "encoder.json").is_file()


def test_unknown_attribute_and_key_name_the_field():
    cfg = JEPAConfig()
    with pytest.raises(ConfigError, match="'learning_rate'"):
        cfg.learning_rate = 1.0
    with pytest.raises(ConfigError, match="'lrr'"):
        JEPAConfig.from_dict({"lrr": 1.0})


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr", "fast"), ("epochs", 1.5), ("eval", "maybe"), ("ema", [0.9]), ("dataset", 3)],
)
def test_wrong_types_name_the_field(key, value):
    with pytest.raises(ConfigError, match=key):
        JEPAConfig.from_dict({key: value})


def test_lossless_conversions_are_accepted():
    cfg = JEPAConfig.from_dict({"lr": "2e-4", "epochs": 3.0, "eval": "true", "ema": [0.99, 1]})
    assert cfg.lr == 2e-4 and cfg.epochs == 3 and cfg.eval is True and cfg.ema == (0.99, 1.0)


def test_model_presets_set_sizes_and_conflicts_are_errors():
    assert JEPAConfig(model="vit_small").embed_dim == 384
    cfg = JEPAConfig()
    cfg.model = "vit_huge"
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == MODEL_SIZES["vit_huge"]
    assert JEPAConfig.from_dict({"model": "vit_tiny"}).embed_dim == 192
    with pytest.raises(ConfigError, match="model='custom'"):
        JEPAConfig(model="vit_small", embed_dim=100)
    assert (
        JEPAConfig.preset("fmnist_w192")
        .replace(model="vit_small", image_size=32, patch_size=4)
        .depth
        == 12
    )


def test_named_model_sizes_are_the_model_group_files():
    # Not vit_w128_d4 or vit_w192_d6: those are size recipes of `model: custom`.
    named = ["vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant"]
    assert list(MODEL_SIZES) == named
    assert MODEL_SIZES["vit_huge"] == (1280, 32, 16)
    cfg = JEPAConfig.preset("seed_vitb16", model="vit_large")
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == MODEL_SIZES["vit_large"]
    assert JEPAConfig(model="vit_huge", depth=32).embed_dim == 1280  # the name fills the rest


@pytest.mark.parametrize(
    "bad",
    [
        dict(image_size=30),
        dict(embed_dim=100),
        dict(lr=0.0),
        dict(pred_mask_scale=(0.3, 0.2)),
        dict(checkpoint_uri="/tmp/x"),
        dict(probe_last_blocks=7),
        dict(pretrain_subset=0),
    ],
)
def test_bad_values_are_rejected(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        JEPAConfig.preset("fmnist_w192", **bad)


def test_training_hash_ignores_runtime_fields_only():
    cfg = JEPAConfig.preset("fmnist_w192")
    assert (
        cfg.replace(num_workers=7, output_dir="elsewhere", max_steps=3).training_hash()
        == cfg.training_hash()
    )
    assert cfg.replace(lr=2e-4).training_hash() != cfg.training_hash()
    assert cfg.replace(seed=1).training_hash() != cfg.training_hash()


def test_fields_added_later_keep_earlier_hashes_at_their_old_behaviour():
    cfg = JEPAConfig.preset("fmnist_w192")
    assert not LATER_TRAINING_FIELDS.keys() & cfg.training_fields().keys()
    changes = {
        "target_last_blocks": 2,
        "vc_weight": 0.1,
        "sigreg_weight": 0.1,
        "fixed_token_counts": True,
        "target_amp": "bf16",
    }
    for key, value in changes.items():
        changed = cfg.replace(**{key: value})
        assert changed.training_fields()[key] == value
        assert changed.training_hash() != cfg.training_hash()


def test_to_dict_round_trips():
    cfg = JEPAConfig.preset("in1k-vith14-ep300")
    assert JEPAConfig.from_dict(cfg.to_dict()) == cfg


def test_the_former_name_subset_names_pretrain_subset(tmp_path):
    renamed = "`subset` was renamed to `pretrain_subset` (it limits pretraining images only)"
    with pytest.raises(ConfigError, match=re.escape(renamed)):
        JEPAConfig.from_dict({"subset": 5})
    with pytest.raises(ConfigError, match=re.escape(renamed)):
        JEPAConfig().subset = 5
    with pytest.raises(ConfigError, match=re.escape(renamed)):
        JEPAConfig().replace(subset=5)
    params = tmp_path / "params.yaml"
    params.write_text("subset: 5\nnproc: 1\n")
    with pytest.raises(ConfigError, match=re.escape(renamed)):
        JEPAConfig.from_yaml(params)
    assert JEPAConfig(pretrain_subset=5).pretrain_subset == 5


def test_a_params_file_is_a_config_plus_pipeline_keys(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("lr: 0.001\nnproc: 2\n")
    assert load_params(params) == (JEPAConfig(lr=1e-3), {"nproc": 2})
    assert JEPAConfig.from_yaml(params) == JEPAConfig(lr=1e-3)  # the library ignores nproc
    params.write_text("lr: 0.001\nnproc: two\n")
    with pytest.raises(ConfigError, match="nproc expects int"):
        JEPAConfig.from_yaml(params)
