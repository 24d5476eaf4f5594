"""Stage `prepare`: check the dataset and write its manifest (`jepa.prepare`).

    python -m pipelines.prepare --params params.yaml --out data/manifest.json

A missing dataset fails here, first, with how to get it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from jepa.config import load_params
from jepa.data import DatasetNotFoundError
from jepa.prepare import DatasetCheckError, build_manifest, write_manifest
from pipelines.common import run_main

log = logging.getLogger("pipelines.prepare")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, required=True, help="manifest JSON to write")
    args = parser.parse_args()
    cfg, _ = load_params(args.params)
    manifest = build_manifest(cfg)
    write_manifest(manifest, args.out)
    splits = ", ".join(f"{s}: {d['num_images']}" for s, d in manifest["splits"].items())
    log.info("%s: %d classes (%s) -> %s", cfg.dataset, manifest["num_classes"], splits, args.out)


if __name__ == "__main__":
    run_main(main, DatasetNotFoundError, DatasetCheckError)
