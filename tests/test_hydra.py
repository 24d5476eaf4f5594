"""jepa/conf/ composes into valid configs, and the committed params.yaml is its composition.

Composition is done the way `dvc exp run` does it (Hydra's compose API under
`initialize_config_dir(version_base=None)`, then `OmegaConf.to_yaml`), and once through
DVC's own `compose_and_dump`.
"""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from jepa.config import CONF_DIR, PIPELINE_KEYS, ConfigError, JEPAConfig, load_params
from pipelines.compose import REPO_CONF_DIR

REPO = Path(__file__).resolve().parents[1]
CONF = CONF_DIR
GROUPS = ("dataset", "model", "experiment", "debug")
# Fields dvc.yaml sets from its paths; the Hydra config leaves them out.
PATH_FIELDS = {"output_dir", "read_checkpoint"}


def compose_yaml(overrides: list[str] | tuple[str, ...] = ()) -> str:
    with initialize_config_dir(str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides))
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)


def compose_params(overrides: list[str] | tuple[str, ...] = ()) -> dict:
    return yaml.safe_load(compose_yaml(overrides))


def validated(values: dict, tmp_path: Path) -> JEPAConfig:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    cfg, pipeline = load_params(path)
    assert set(pipeline) == set(PIPELINE_KEYS)
    return cfg


def group_options() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def test_committed_params_yaml_is_the_composition_of_conf() -> None:
    assert (REPO / "params.yaml").read_text() == compose_yaml(), (
        "params.yaml is stale: run `python -m pipelines.compose` after editing jepa/conf/"
    )


# bench/gpu_check.py reads these flat files where Hydra is not installed.
BENCH_CONFIGS = {
    "vitb16_224.yaml": ["experiment=seed_vitb16"],
    "vits16_224.yaml": ["experiment=seed_vitb16", "model=vit_small"],
    "fmnist_e2e.yaml": ["epochs=3"],
}


@pytest.mark.parametrize("name", sorted(BENCH_CONFIGS))
def test_bench_configs_are_compositions_of_conf(name: str) -> None:
    overrides = BENCH_CONFIGS[name]
    assert (REPO / "bench" / "configs" / name).read_text() == compose_yaml(overrides), (
        f"bench/configs/{name} is stale: python -m pipelines.compose {' '.join(overrides)} "
        f"--out bench/configs/{name}"
    )


def test_dvc_and_the_library_read_the_same_config_groups() -> None:
    dvc_config = configparser.ConfigParser()
    dvc_config.read(REPO / ".dvc" / "config")
    assert Path(dvc_config["hydra"]["config_dir"]) == REPO_CONF_DIR
    assert (REPO / REPO_CONF_DIR).resolve() == CONF_DIR


def test_dvc_composes_the_same_bytes(tmp_path: Path) -> None:
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF), None, "config", str(tmp_path), [])
    assert out.read_text() == (REPO / "params.yaml").read_text()


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_config_option_composes_and_validates(
    group: str, option: str, tmp_path: Path
) -> None:
    values = compose_params([f"{group}={option}"])
    if values["image_size"] % values["patch_size"]:
        # The default's 7-px patches do not tile CIFAR's 32-px images: the error says so and
        # names a patch size that does, which then composes.
        with pytest.raises(ConfigError, match=r"image_size=32 is not a multiple of patch_size=7; "
                           r"set patch_size to one that divides it, e.g. patch_size=8"):  # fmt: skip
            validated(values, tmp_path)
        values = compose_params([f"{group}={option}", "patch_size=8"])
    cfg = validated(values, tmp_path)
    if group == "model" and option != "custom":
        assert cfg.model == values["model"]


def test_there_is_something_to_compose() -> None:
    options = dict.fromkeys(g for g, _ in group_options())
    assert set(options) == set(GROUPS)
    assert {o for g, o in group_options() if g == "model"} >= {
        "vit_tiny", "vit_small", "vit_base", "vit_large", "vit_huge", "vit_giant",
        "vit_w128_d3", "vit_w128_d4", "vit_w192_d6",
    }  # fmt: skip


def test_composition_is_flat_and_names_every_field_once() -> None:
    values = compose_params()
    fields = set(JEPAConfig().to_dict())
    assert set(values) == (fields - PATH_FIELDS) | set(PIPELINE_KEYS)
    assert all(not isinstance(v, dict) for v in values.values())


def test_base_values_are_the_library_defaults() -> None:
    """config.yaml's own block must not drift from JEPAConfig's defaults."""
    base = yaml.safe_load((CONF / "config.yaml").read_text())
    base.pop("defaults")
    for key in PIPELINE_KEYS:
        base.pop(key)
    defaults = JEPAConfig.from_dict({})  # from_dict: no model-preset resizing
    expected = {k: v for k, v in defaults.to_dict().items() if k not in PATH_FIELDS}
    assert base == expected


def experiments() -> list[str]:
    return sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", experiments())
def test_a_preset_is_its_experiments_composition(experiment: str, tmp_path: Path) -> None:
    composed = validated(compose_params([f"experiment={experiment}"]), tmp_path)
    assert JEPAConfig.preset(experiment) == composed
    assert JEPAConfig.preset(experiment.replace("_", "-")) == composed


def test_the_pipeline_default_is_the_preset_fmnist_cpu_default() -> None:
    assert JEPAConfig.preset("fmnist_cpu_default") == JEPAConfig.from_yaml(REPO / "params.yaml")


def test_renamed_groups_are_gone() -> None:
    for old in ("model/fmnist_tiny", "model/fmnist_small", "experiment/fmnist_tiny"):
        assert not (CONF / f"{old}.yaml").exists(), old


def test_set_key_versus_pick_group(tmp_path: Path) -> None:
    lr = compose_params(["lr=2e-4"])
    assert lr["lr"] == pytest.approx(2e-4) and lr["model"] == "custom"

    small = validated(compose_params(["model=vit_small"]), tmp_path)
    assert (small.model, small.embed_dim, small.depth, small.num_heads) == ("vit_small", 384, 12, 6)
    assert small.dataset == "fashion_mnist"  # the rest of the experiment stays

    cifar = compose_params(["dataset=cifar10"])
    assert (cifar["dataset"], cifar["image_size"], cifar["in_chans"]) == ("cifar10", 32, 3)

    # A group picked on the command line beats the experiment's own choice.
    mixed = compose_params(["experiment=seed_vitb16", "model=vit_small"])
    assert (mixed["dataset"], mixed["model"], mixed["patch_size"]) == (
        "imagenet1k",
        "vit_small",
        16,
    )

    custom = validated(
        compose_params(["model=custom", "embed_dim=256", "depth=4", "num_heads=4"]), tmp_path
    )
    assert (custom.model, custom.embed_dim, custom.depth, custom.num_heads) == ("custom", 256, 4, 4)


def test_unknown_keys_fail_with_their_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException, match="Could not override 'lrr'"):
        compose_params(["lrr=1e-3"])
    appended = compose_params(["+lrr=1e-3"])  # Hydra lets `+` add it; the schema does not
    with pytest.raises(ConfigError, match="'lrr'"):
        validated(appended, tmp_path)


def test_sizes_that_contradict_the_model_name_fail(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set model='custom'"):
        validated(compose_params(["model=vit_small", "embed_dim=512"]), tmp_path)


def test_pipeline_keys_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("lr: 0.001\nnproc: two\n")
    with pytest.raises(ConfigError, match="nproc expects int"):
        load_params(path)
    path.write_text("lr: 0.001\nnproc: 2\n")
    cfg, pipeline = load_params(path)
    assert pipeline == {"nproc": 2} and cfg.lr == 0.001
