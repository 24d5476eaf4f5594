"""What every stage main shares: reading params.yaml, logging, errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from jepa.config import ConfigError, JEPAConfig

# Keys of params.yaml that belong to the pipeline, not to JEPAConfig, with their types.
# Everything else must be a JEPAConfig field: a typo fails with the key's name.
PIPELINE_KEYS: dict[str, type] = {"nproc": int}


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


def evaluation_config(cfg: JEPAConfig) -> JEPAConfig:
    """The config the evaluation stages use: `subset` is a pretraining knob here.

    `jepa.data.build_dataset` applies `subset` to every train split, so without this the
    probes would see only the pretraining images and the baselines would change with
    `subset`, a parameter dvc.yaml does not (and should not) list for them. The probes'
    training images are capped by `probe_subset` instead.
    """
    return cfg.replace(subset=None)


def run_main(main: Callable[[], None], *expected: type[BaseException]) -> None:
    """Run a stage main with logging; `expected` errors print one line and exit 2.

    Expected errors are the user's to fix (missing data, a bad config); their message
    says how, and a traceback would bury it.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        main()
    except (ConfigError, *expected) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
