"""Time how long each pipeline stage takes to start: a fresh Python process that imports
the stage and does its first piece of real work, against another revision of this tree.

    .venv/bin/python bench/startup.py --baseline 5dd2d4e     # this tree against 5dd2d4e

Every stage of `dvc repro` is a new process, so what its imports cost is paid once per
stage (six per run, more with the CLI). Each snippet below runs in a fresh interpreter,
once per round per tree, alternating, median of `--rounds`; the baseline is `git archive
REV` unpacked into a temporary folder, run with the same interpreter. Prints one table
beside the machine's fp32 matmul rate. The snippets read `params.yaml`'s dataset (the
default Fashion-MNIST files must be installed).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

try:  # run as `python bench/startup.py` (the bench folder on sys.path) or as a module
    from train_step import matmul_tflops
except ImportError:  # pragma: no cover
    from bench.train_step import matmul_tflops

REPO = Path(__file__).resolve().parent.parent

_DATASET = (
    "from pathlib import Path\n"
    "from jepa.config import load_params\n"
    "from jepa.data import build_dataset\n"
    "cfg, _ = load_params(Path('params.yaml'))\n"
    "build_dataset(cfg, 'test', train_transform=False)[0]\n"
)
_PROBE = (
    "import numpy as np\n"
    "from jepa.probe import linear_probe\n"
    "x = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)\n"
    "linear_probe(x, (x[:, 0] > 0).astype(int), x, (x[:, 0] > 0).astype(int))\n"
)
# What each stage does before its real work starts: its imports, then the first data read
# or the first probe fit.
SNIPPETS = {
    "prepare: imports, a dataset": "import pipelines.prepare\n" + _DATASET,
    "pretrain: imports": "import pipelines.pretrain\n",
    "extract: imports, a dataset": "import pipelines.extract\n" + _DATASET,
    "probe: imports, a small probe": "import pipelines.probe\n" + _PROBE,
    "baselines: imports, a dataset, a small probe": "import pipelines.baselines\n"
    + _DATASET
    + _PROBE,
}


def seconds(tree: Path, code: str, setup: str = "") -> float:
    """Seconds from the start of `code` to its end, in a fresh interpreter in `tree`, after
    `setup` (not timed)."""
    timed = "\n".join(
        [
            setup,
            "import time",
            "_start = time.perf_counter()",
            code,
            "print(time.perf_counter() - _start)",
            "",
        ]
    )
    out = subprocess.run(
        [sys.executable, "-c", timed],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"in {tree}:\n{code}\nfailed:\n{out.stderr[-2000:]}")
    return float(out.stdout.split()[-1])


def unpack(rev: str, into: Path) -> Path:
    """`git archive rev` of this repository, unpacked into `into`; params.yaml from here, so
    both trees read the same dataset."""
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", rev], cwd=REPO, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    (into / "tree" / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return into / "tree"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="a git revision to time beside this tree")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rate = matmul_tflops(torch.device("cpu"), torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": REPO}
        if args.baseline:
            trees = {args.baseline: unpack(args.baseline, Path(tmp)), **trees}
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for name, code in SNIPPETS.items():
                for label, tree in trees.items():
                    times.setdefault((name, label), []).append(seconds(tree, code))
    print(f"machine: fp32 matmul {rate:.3f} TFLOP/s; median of {args.rounds} fresh processes")
    labels = list(trees)
    print("| stage start | " + " | ".join(f"{label} s" for label in labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for name in SNIPPETS:
        cells = " | ".join(f"{statistics.median(times[(name, label)]):.2f}" for label in labels)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
