"""One typed, validated configuration for every entry point.

`JEPAConfig` is the single schema behind the Python API, the CLI, the DVC stages
(`params.yaml`) and the Prefect flows. It keeps the seed document's flat field
names. Where the seed and the official I-JEPA configs disagree, the default follows
the official code and the seed's value stays one assignment away:

==================  =====================  ==========================
field               default (official)     seed's variant
==================  =====================  ==========================
enc_mask_scale      (0.85, 1.0)            (0.15, 0.2)
loss                "smooth_l1"            "l2"
ema_schedule        "linear"               "cosine"
==================  =====================  ==========================

Derived quantities (steps per epoch, total steps, the effective architecture) are
computed by functions here and recorded in run outputs; they are never written back
into the config.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

# The Hydra config groups (model/, dataset/, experiment/, debug/), shipped with the package.
CONF_DIR = Path(__file__).resolve().parent / "conf"

SIZE_KEYS = ("embed_dim", "depth", "num_heads")  # what a named model fixes


def _read_model_sizes() -> dict[str, tuple[int, int, int]]:
    """Named encoder sizes from the model group, smallest first: every
    `jepa/conf/model/vit_*.yaml` whose `model` is its own name (the others, such as
    vit_w128_d4, are size recipes of `model: custom`)."""
    sizes = {}
    for path in (CONF_DIR / "model").glob("vit_*.yaml"):
        values = yaml.safe_load(path.read_text())
        if values.get("model") == path.stem:
            sizes[path.stem] = tuple(int(values[key]) for key in SIZE_KEYS)
    if not sizes:
        raise ImportError(f"no model sizes in {CONF_DIR / 'model'}: the package lacks its conf/")
    return dict(sorted(sizes.items(), key=lambda item: item[1]))


# Official I-JEPA encoder sizes (timm naming): name -> (embed_dim, depth, num_heads). The
# one table is jepa/conf/model/vit_*.yaml (what `-S model=vit_small` composes).
MODEL_SIZES: typing.Mapping[str, tuple[int, int, int]] = types.MappingProxyType(_read_model_sizes())

DATASETS = ("fashion_mnist", "cifar10", "imagefolder", "imagenet1k", "imagenet")
MASK_STRATEGIES = ("multiblock", "random")
LOSSES = ("smooth_l1", "l2")
EMA_SCHEDULES = ("linear", "cosine")
AMP_MODES = ("auto", "bf16", "none")
TARGET_AMP_MODES = ("same", *AMP_MODES)  # "same": the target encoder runs as `amp` says
PROBE_BACKENDS = ("lbfgs", "sklearn", "torch")
CORRUPT_POLICIES = ("skip", "raise")
RDZV_BACKENDS = ("c10d",)  # torchrun's dynamic rendezvous; no node ranks to hand out


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


# Former field names -> (the new name, why it changed); using an old name is an error.
RENAMED_FIELDS: dict[str, tuple[str, str]] = {
    "subset": ("pretrain_subset", "it limits pretraining images only"),
}

# Keys of a params file (params.yaml) that belong to the DVC pipeline, not to JEPAConfig,
# with their types. The library reads such a file too and leaves these keys to the pipeline.
PIPELINE_KEYS: dict[str, type] = {"nproc": int}


def renamed_field_error(old: str) -> ConfigError:
    """The error for a former field name, naming the new one."""
    new, why = RENAMED_FIELDS[old]
    return ConfigError(f"`{old}` was renamed to `{new}` ({why})")


@dataclass
class JEPAConfig:
    """Flat I-JEPA configuration (seed names and defaults, official-code defaults where they differ)."""

    # ---- data -----------------------------------------------------------------
    dataset: str = "imagenet1k"
    root_path: str | None = None  # None: the dataset's default location
    image_folder: str = "train"
    download: bool = False
    pretrain_subset: int | None = None  # first N training images, for pretraining only
    corrupt_images: str = "skip"  # skip unreadable images (counted, warned) or raise
    crop_scale: tuple[float, float] = (0.3, 1.0)  # RandomResizedCrop scale, official value
    # Pretraining images mirrored left to right, each with probability 1/2 (a function of
    # seed, epoch and index: jepa.data.HorizontalFlips); the official configs have none.
    hflip: bool = False
    # Pretraining images moved by up to `shift` pixels along each axis (edges repeated), a
    # function of seed, epoch and index (jepa.data.RandomShifts); the official code has none.
    shift: int = 0
    num_workers: int = 4

    # ---- encoder --------------------------------------------------------------
    model: str = "vit_base"  # a name in MODEL_SIZES, or "custom"
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    gradient_checkpointing: bool = False

    # ---- predictor ------------------------------------------------------------
    pred_embed_dim: int = 384
    pred_depth: int = 6
    pred_num_heads: int = 12

    # ---- masking --------------------------------------------------------------
    mask_strategy: str = "multiblock"
    mask_ratio: float = 0.75  # random masking only
    num_enc_masks: int = 1
    enc_mask_scale: tuple[float, float] = (0.85, 1.0)
    num_pred_masks: int = 4
    pred_mask_scale: tuple[float, float] = (0.15, 0.2)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    min_keep: int = 10
    allow_overlap: bool = False
    # Same token counts every step (multiblock): each context keeps exactly min_keep
    # patches, each target block its smallest possible area (jepa.masks); for compile.
    fixed_token_counts: bool = False

    # ---- optimisation ---------------------------------------------------------
    batch_size: int = 64  # global batch per optimizer micro-step, split across ranks
    epochs: int = 100
    lr: float = 1.5e-4
    start_lr: float = 0.0
    min_lr: float = 1e-6
    warmup_epochs: float = 40
    weight_decay: float = 0.05
    final_weight_decay: float | None = None  # None: constant weight decay (seed)
    clip_grad: float | None = 1.0  # None or 0: no clipping
    accum_iter: int = 1
    ema: tuple[float, float] = (0.996, 1.0)
    ema_schedule: str = "linear"
    loss: str = "smooth_l1"
    # Regression targets: the mean of the layer-normed outputs of the target encoder's last
    # N blocks (1: its final output, the official target; >1 as in data2vec).
    target_last_blocks: int = 1
    # Weight of a variance-covariance penalty (VICReg's, as C-JEPA adds it) on the context
    # encoder's average-pooled output; 0 turns it off (official).
    vc_weight: float = 0.0
    # Weight of LeJEPA's SIGReg (an Epps-Pulley test of random 1-D projections against a
    # standard normal) on the context encoder's average-pooled output; 0 turns it off.
    sigreg_weight: float = 0.0
    max_steps: int | None = None  # stop early after this many optimizer steps

    # ---- runtime --------------------------------------------------------------
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: str = "auto"  # auto: bf16 on CUDA, none on CPU
    # The target encoder's no-grad forward pass alone under another precision: `bf16` runs
    # it under bf16 autocast while the rest trains as `amp` says (a change of the targets'
    # precision, so of the objective; faster only on CPUs with bf16 units). same: as `amp`.
    target_amp: str = "same"
    compile: bool = False
    output_dir: str = "./output"
    checkpoint_every: int = 200  # optimizer steps between checkpoints (and at each epoch end)
    checkpoint_uri: str | None = None  # s3://bucket/prefix to mirror the latest checkpoint
    checkpoint_upload_timeout_s: float = 300.0  # at the end, wait this long for the last upload
    # Where the DVC pipeline keeps in-progress training state, keyed by the run's identity;
    # None: the user cache folder ($XDG_CACHE_HOME/jepa/runs or ~/.cache/jepa/runs).
    run_store: str | None = None
    resume: bool = True
    log_every: int = 10
    diagnostics_every: int = 100
    progress: bool = True
    # Training images of the online kNN monitor (jepa/monitor.py): their kNN top-1 is
    # logged at the start and after every epoch; 0 turns it off.
    knn_monitor_images: int = 2000
    # How the pipeline's pretrain stage launches torchrun (pipelines/torchrun.py); torchrun's
    # PET_* variable of the same name wins when set (PET_NNODES, PET_RDZV_ENDPOINT, ...).
    # nnodes 1 without rdzv_endpoint: `torchrun --standalone`, one node.
    nnodes: int = 1
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str | None = None  # host:port that every node reaches (node 0's)
    rdzv_id: str | None = None  # the job's name, the same on every node
    max_restarts: int = 0  # restarts of the worker group after a failure (README: Reliability)

    # ---- evaluation -----------------------------------------------------------
    eval: bool = False
    read_checkpoint: str | None = None
    probe_backend: str = "lbfgs"  # jepa/probe.py: lbfgs (torch), sklearn, torch (AdamW)
    probe_last_blocks: int = 1  # 1: pooled final tokens; 4: concat of the last 4 blocks
    probe_subset: int | None = None  # cap train images used by the probe
    knn_k: int = 20
    eval_batch_size: int = 256

    # -------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if name in RENAMED_FIELDS:
            raise renamed_field_error(name)
        if name not in _FIELD_TYPES:
            raise ConfigError(
                f"JEPAConfig has no field {name!r}; known fields: {', '.join(sorted(_FIELD_TYPES))}"
            )
        object.__setattr__(self, name, _coerce(name, value))
        if name == "model" and "num_heads" in self.__dict__:  # not while __init__ runs
            for key, size in model_sizes_filled(value).items():  # cfg.model = "vit_small"
                object.__setattr__(self, key, size)

    def __post_init__(self) -> None:
        # JEPAConfig(model="vit_small"): the sizes left at their defaults count as not given.
        given = [key for key in SIZE_KEYS if getattr(self, key) != _SIZE_DEFAULTS[key]]
        for key, size in model_sizes_filled(self.model, given).items():
            object.__setattr__(self, key, size)
        self.validate()

    # ---- construction -------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], *, strict: bool = True) -> JEPAConfig:
        """Build from a flat mapping. A named `model` fills the encoder sizes it names
        unless they are given too. Unknown keys raise `ConfigError` when `strict`."""
        values = dict(values)
        if renamed := sorted(RENAMED_FIELDS.keys() & values.keys()):
            raise renamed_field_error(renamed[0])
        unknown = sorted(set(values) - set(_FIELD_TYPES))
        if unknown and strict:
            raise ConfigError(
                f"unknown config key(s) {', '.join(map(repr, unknown))}; "
                f"see `jepa train --help` for the known keys"
            )
        for key in unknown:
            values.pop(key)
        values.update(model_sizes_filled(values.get("model"), values))
        cfg = cls.__new__(cls)
        for f in fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            object.__setattr__(cfg, f.name, _coerce(f.name, values.get(f.name, default)))
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> JEPAConfig:
        """Load a flat YAML mapping (e.g. the committed `params.yaml`; its pipeline-only
        keys, `PIPELINE_KEYS`, are checked and left out)."""
        return load_params(path)[0]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> JEPAConfig:
        """The experiment `name` of the config groups (`jepa/conf/experiment/<name>.yaml`,
        listed by `preset_names()`; `-` may stand for `_`), as `dvc exp run -S
        experiment=<name>` composes it, with `overrides` applied as by `replace`.

        Needs hydra-core; without it, load a flat YAML file with `from_yaml`.
        """
        cfg = cls.from_dict(preset_values(name))
        return cfg.replace(**overrides) if overrides else cfg

    @classmethod
    def compose(cls, *overrides: str) -> JEPAConfig:
        """The config groups composed with Hydra `overrides`, exactly as `dvc exp run -S ...`
        composes params.yaml: `JEPAConfig.compose("debug=tiny", "lr=2e-4")`. Needs hydra-core."""
        return cls.from_dict(_compose(tuple(overrides)))

    def replace(self, **overrides: Any) -> JEPAConfig:
        """A copy with some fields changed (a named `model` refills the encoder sizes)."""
        values = {**self.to_dict(), **overrides}
        if "model" in overrides:
            values.update(model_sizes_filled(overrides["model"], overrides))
        return JEPAConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML/JSON-friendly values (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }

    # ---- validation ---------------------------------------------------------
    def validate(self) -> JEPAConfig:
        """Check choices, sizes and ranges; raise `ConfigError` naming the field."""
        self._validate_choices()
        self._validate_sizes()
        self._validate_ranges()
        return self

    def _validate_choices(self) -> None:
        for name, allowed in CHOICES.items():
            _choice(name, getattr(self, name), allowed)
        if self.model != "custom":
            _choice("model", self.model, (*MODEL_SIZES, "custom"))
            want = MODEL_SIZES[self.model]
            have = (self.embed_dim, self.depth, self.num_heads)
            if have != want:
                raise ConfigError(
                    f"model={self.model!r} means embed_dim/depth/num_heads={want}, but the config "
                    f"has {have}; set model='custom' to use your own sizes"
                )

    def _validate_sizes(self) -> None:
        for name in _POSITIVE_INTS:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.knn_monitor_images < 0:
            raise ConfigError(
                f"knn_monitor_images must be >= 0 (0 turns the monitor off), "
                f"got {self.knn_monitor_images}"
            )
        for name in ("pretrain_subset", "max_steps", "probe_subset"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 or null, got {getattr(self, name)}")
        for whole, part in (
            ("image_size", "patch_size"),
            ("embed_dim", "num_heads"),
            ("pred_embed_dim", "pred_num_heads"),
        ):
            whole_value, part_value = getattr(self, whole), getattr(self, part)
            if whole_value % part_value:
                hint = ""
                if (near := _nearest_divisor(whole_value, part_value)) is not None:
                    hint = f"; set {part} to one that divides it, e.g. {part}={near}"
                raise ConfigError(
                    f"{whole}={whole_value} is not a multiple of {part}={part_value}{hint}"
                )
        if self.target_last_blocks > self.depth:
            raise ConfigError(
                f"target_last_blocks={self.target_last_blocks} exceeds depth={self.depth}"
            )
        if self.probe_last_blocks > self.depth:
            raise ConfigError(
                f"probe_last_blocks={self.probe_last_blocks} exceeds depth={self.depth}"
            )

    def _validate_ranges(self) -> None:
        for name in ("enc_mask_scale", "pred_mask_scale", "crop_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ConfigError(f"{name} must satisfy 0 < min <= max <= 1, got {(lo, hi)}")
        lo, hi = self.aspect_ratio
        if not 0 < lo <= hi:
            raise ConfigError(f"aspect_ratio must satisfy 0 < min <= max, got {(lo, hi)}")
        lo, hi = self.ema
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(f"ema must satisfy 0 <= start <= end <= 1, got {(lo, hi)}")
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.lr <= 0 or self.min_lr < 0 or self.start_lr < 0:
            raise ConfigError(
                f"lr must be > 0 and start_lr, min_lr >= 0 (lr={self.lr}, "
                f"start_lr={self.start_lr}, min_lr={self.min_lr})"
            )
        nonnegative = (
            "warmup_epochs",
            "weight_decay",
            "drop_path_rate",
            "vc_weight",
            "sigreg_weight",
            "shift",
        )
        for name in nonnegative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.checkpoint_upload_timeout_s < 0:
            raise ConfigError(
                f"checkpoint_upload_timeout_s must be >= 0, got {self.checkpoint_upload_timeout_s}"
            )
        if self.checkpoint_uri is not None and not self.checkpoint_uri.startswith("s3://"):
            raise ConfigError(f"checkpoint_uri must start with s3://, got {self.checkpoint_uri!r}")

    # ---- derived values (computed, never stored) ------------------------------
    @property
    def dataset_name(self) -> str:
        """Canonical dataset name (`imagenet` is an alias of `imagenet1k`)."""
        return "imagenet1k" if self.dataset == "imagenet" else self.dataset

    @property
    def grid_size(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def training_hash(self) -> str:
        """Hash of the fields that define a training run's trajectory.

        Runtime-only fields (logging, workers, evaluation, paths) are left out, so a
        checkpoint is resumable after those change but never after, say, `lr` does.
        """
        return hashlib.sha256(
            json.dumps(self.training_fields(), sort_keys=True).encode()
        ).hexdigest()[:16]

    def training_fields(self) -> dict[str, Any]:
        """The subset of fields that `training_hash` covers.

        A training field added later is left out while it has the value that keeps the
        earlier behaviour (`LATER_TRAINING_FIELDS`), so runs and checkpoints from before it
        existed keep their hash and stay resumable.
        """
        return {
            k: v
            for k, v in self.to_dict().items()
            if k not in RUNTIME_FIELDS and LATER_TRAINING_FIELDS.get(k, _NEVER) != v
        }


def model_sizes_filled(model: Any, given: typing.Collection[str] = ()) -> dict[str, int]:
    """The rule "a model name fills in the sizes": the `SIZE_KEYS` values that a named
    `model` (`MODEL_SIZES`) sets, except the keys in `given` (set explicitly; `validate`
    checks them against the name). Empty for "custom" or an unknown name."""
    if not isinstance(model, str) or model not in MODEL_SIZES:
        return {}
    sizes = zip(SIZE_KEYS, MODEL_SIZES[model], strict=True)
    return {key: size for key, size in sizes if key not in given}


# Former preset and config-group names -> what to use instead.
RENAMED_PRESETS = {
    "fmnist_tiny": "'fmnist_w192' (the former preset fmnist-tiny: a 192x6 encoder, batch 128) "
    "or 'fmnist_cpu_default' (the former experiment fmnist_tiny: the DVC pipeline's default)",
    "fmnist_small": "'fmnist_cpu_default' (the pipeline's default, now 3 deep; the former "
    "model fmnist_small is the model group 'vit_w128_d4')",
}


def preset_names() -> list[str]:
    """The preset names: the experiments of the config groups (`jepa/conf/experiment/`)."""
    return sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


def preset_values(name: str) -> dict[str, Any]:
    """The flat values of preset `name` (`JEPAConfig.preset`), pipeline-only keys left out."""
    key = name.replace("-", "_")
    if key in RENAMED_PRESETS:
        raise ConfigError(f"preset {name!r} was renamed: use {RENAMED_PRESETS[key]}")
    if key not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
    return dict(_compose((f"experiment={key}",)))


@functools.cache
def _compose(overrides: tuple[str, ...]) -> dict[str, Any]:
    """Hydra's composition of `CONF_DIR` with `overrides`, resolved and flat, without the
    pipeline-only keys. Callers copy the result: it is cached."""
    try:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf
    except ImportError as err:
        raise ConfigError(
            "presets are composed from jepa/conf by Hydra: install hydra-core "
            "(pip install hydra-core), or pass a flat YAML config (JEPAConfig.from_yaml, "
            "`--config params.yaml`)"
        ) from err
    # version_base=None, as `dvc exp run` composes: a preset is the params.yaml DVC writes
    # for that experiment. The context manager leaves no global Hydra state behind.
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        composed = compose(config_name="config", overrides=list(overrides))
    values = OmegaConf.to_container(composed, resolve=True)
    return {key: value for key, value in values.items() if key not in PIPELINE_KEYS}


def _nearest_divisor(n: int, near: int) -> int | None:
    """The divisor of `n` above 1 closest to `near` (the smaller on a tie), or None."""
    divisors = [d for d in range(2, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - near), d)) if divisors else None


def load_params(path: str | Path) -> tuple[JEPAConfig, dict[str, Any]]:
    """`(JEPAConfig, pipeline keys)` from a flat params file; unknown keys are errors."""
    path = Path(path)
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    pipeline = {}
    for key, kind in PIPELINE_KEYS.items():
        if key in values:
            value = values.pop(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"{path}: {key} expects {kind.__name__}, got {value!r}")
            pipeline[key] = value
    try:
        return JEPAConfig.from_dict(values), pipeline
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


# Fields that may change between a run and its resumption.
RUNTIME_FIELDS = frozenset(
    {
        "root_path",
        "image_folder",
        "download",
        "corrupt_images",
        "num_workers",
        "device",
        "compile",
        "output_dir",
        "checkpoint_every",
        "checkpoint_uri",
        "checkpoint_upload_timeout_s",
        "run_store",
        "resume",
        "log_every",
        "diagnostics_every",
        "progress",
        "knn_monitor_images",
        "eval",
        "read_checkpoint",
        "probe_backend",
        "probe_last_blocks",
        "probe_subset",
        "knn_k",
        "eval_batch_size",
        "max_steps",
        "gradient_checkpointing",
        "nnodes",
        "rdzv_backend",
        "rdzv_endpoint",
        "rdzv_id",
        "max_restarts",
    }
)

# Training fields added after checkpoints were first written -> the value that trains as
# before they existed (JEPAConfig.training_fields leaves them out of the hash at that value).
LATER_TRAINING_FIELDS: dict[str, Any] = {
    "target_last_blocks": 1,
    "vc_weight": 0.0,
    "sigreg_weight": 0.0,
    "fixed_token_counts": False,
    "target_amp": "same",
    "hflip": False,
    "shift": 0,
}
_NEVER = object()

_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(JEPAConfig)
_SIZE_DEFAULTS = {f.name: f.default for f in fields(JEPAConfig) if f.name in SIZE_KEYS}

CHOICES = {  # the allowed values of the string fields (the CLI lists them too)
    "dataset": DATASETS,
    "mask_strategy": MASK_STRATEGIES,
    "loss": LOSSES,
    "ema_schedule": EMA_SCHEDULES,
    "amp": AMP_MODES,
    "target_amp": TARGET_AMP_MODES,
    "probe_backend": PROBE_BACKENDS,
    "corrupt_images": CORRUPT_POLICIES,
    "rdzv_backend": RDZV_BACKENDS,
}

_POSITIVE_INTS = (
    "image_size",
    "patch_size",
    "in_chans",
    "embed_dim",
    "depth",
    "num_heads",
    "pred_embed_dim",
    "pred_depth",
    "pred_num_heads",
    "batch_size",
    "epochs",
    "accum_iter",
    "num_enc_masks",
    "num_pred_masks",
    "min_keep",
    "knn_k",
    "eval_batch_size",
    "log_every",
    "diagnostics_every",
    "checkpoint_every",
    "probe_last_blocks",
    "target_last_blocks",
    "nnodes",
)


def _choice(name: str, value: str, allowed: typing.Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _coerce(name: str, value: Any) -> Any:
    """Check `value` against the annotated type of `name`; convert lossless cases."""
    hint = _FIELD_TYPES[name]
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional, hint = True, args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be null")
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ConfigError(f"{name} must be a pair [min, max], got {value!r}")
        return tuple(_scalar(name, float, v) for v in value)
    return _scalar(name, hint, value)


def _scalar(name: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{name} expects {kind.__name__}, got {value!r} ({type(value).__name__})")
