"""`python -m jepa.train` that also saves each rank's final weights, for DDP tests under
torchrun (the library writes from rank 0 only; a test needs to see every rank end equal).

    torchrun ... tests/rank_weights.py OUT_DIR --config params.yaml

writes `OUT_DIR/rank<R>.pt`: `{"<network>.<key>": tensor}` of every network of the run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import jepa.train


def main() -> None:
    out, train_to_the_end = Path(sys.argv[1]), jepa.train.train_to_the_end

    def train_and_save(run: jepa.train.Run) -> dict:
        summary = train_to_the_end(run)
        weights = {
            f"{name}.{key}": value
            for name, network in run.model.networks().items()
            for key, value in network.state_dict().items()
        }
        out.mkdir(parents=True, exist_ok=True)
        torch.save(weights, out / f"rank{run.env.rank}.pt")
        return summary

    jepa.train.train_to_the_end = train_and_save
    jepa.train.main(sys.argv[2:])


if __name__ == "__main__":
    main()
