"""This project's pipeline, copied into a throwaway repository for end-to-end tests."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What `dvc repro` needs (the config groups are in jepa/conf); .dvcignore keeps bytecode
# and jepa/conf out of the `jepa` dependency's hash.
PIPELINE_FILES = ("dvc.yaml", ".dvcignore", "pipelines", "jepa")


def copy_pipeline(dest: Path) -> Path:
    """Copy `PIPELINE_FILES` (without `__pycache__`) into the folder `dest`; return it."""
    for name in PIPELINE_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest
