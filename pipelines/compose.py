"""Regenerate params.yaml from jepa/conf/ exactly as `dvc exp run` does.

    python -m pipelines.compose                      # the committed default
    python -m pipelines.compose experiment=seed_vitb16 root_path=/data/imagenet

`dvc exp run -S ...` composes jepa/conf/ with its overrides and overwrites params.yaml with
DVC's own `compose_and_dump`, which this calls too, so both write identical bytes. Run it
after editing jepa/conf/ (tests/test_hydra.py fails until params.yaml matches again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jepa.config import load_params

# The config groups in a checkout, relative to its root: .dvc/config's [hydra] config_dir.
REPO_CONF_DIR = Path("jepa", "conf")


def compose(output: Path, overrides: list[str], conf_dir: Path = REPO_CONF_DIR) -> Path:
    """Compose `conf_dir/config.yaml` with Hydra `overrides` into `output` (flat YAML)."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(output, str(conf_dir.resolve()), None, "config", str(Path.cwd()), overrides)
    load_params(output)  # the result must be a valid JEPAConfig plus pipeline keys
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. lr=2e-4 model=vit_small"
    )
    parser.add_argument("--out", type=Path, default=Path("params.yaml"))
    parser.add_argument("--conf", type=Path, default=REPO_CONF_DIR)
    args = parser.parse_args()
    print(f"wrote {compose(args.out, args.overrides, args.conf)}")


if __name__ == "__main__":
    main()
