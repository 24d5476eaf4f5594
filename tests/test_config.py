"""JEPAConfig: one typed schema; bad keys, types and values fail naming the field."""

import re

import pytest

from jepa.config import MODEL_SIZES, PRESETS, ConfigError, JEPAConfig, load_params


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


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    assert JEPAConfig.preset(name).validate()


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
        JEPAConfig.preset("fmnist-tiny")
        .replace(model="vit_small", image_size=32, patch_size=4)
        .depth
        == 12
    )


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
        JEPAConfig.preset("fmnist-tiny", **bad)


def test_training_hash_ignores_runtime_fields_only():
    cfg = JEPAConfig.preset("fmnist-tiny")
    assert (
        cfg.replace(num_workers=7, output_dir="elsewhere", max_steps=3).training_hash()
        == cfg.training_hash()
    )
    assert cfg.replace(lr=2e-4).training_hash() != cfg.training_hash()
    assert cfg.replace(seed=1).training_hash() != cfg.training_hash()


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
