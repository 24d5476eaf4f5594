"""`torchrun` for the stages: the same launcher, with its launch settings read from
params.yaml, and a failed worker reported in one line instead of torchrun's traceback.

    python -m pipelines.torchrun --params params.yaml -m pipelines.pretrain ...

`--params FILE` first (optional) turns the launch keys of FILE into torchrun's options:
`nproc` → `--nproc_per_node`, and `nnodes`, `rdzv_backend`, `rdzv_endpoint`, `rdzv_id`,
`max_restarts` → the options of those names. One rule: a torchrun `PET_*` variable that is
set (`PET_NNODES`, `PET_RDZV_ENDPOINT`, ...; a cluster's job template sets them) wins over
the key, so the option is left out and torchrun reads the variable. With one node and no
rendezvous endpoint the launch is `--standalone`. The rest of the command line is torchrun's.

A worker that fails has already said why (a stage main prints one `error:` line,
`pipelines.common.run_main`); torchrun would follow it with the traceback of its own
`ChildFailedError`, which says nothing more and buries the line that matters. The launcher
runs in this process, so the workers' parent-death signal (`jepa.distributed`) still
ties them to it. The exit status is the failed worker's (128 + N for signal N).

torchrun makes a `torchelastic_*` folder in the temporary directory for every launch and
leaves it there; with nothing redirected it holds only empty per-attempt folders. Unless
a log folder or redirection was asked for (`--log-dir`, `--redirects`, `--tee` or their
`PET_*` variables), the launcher gives torchrun a folder of its own and removes it when
the launch ends, so repeated `dvc repro` runs and test sessions leave nothing behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from jepa.config import ConfigError, load_params

RENDEZVOUS = ("rdzv_backend", "rdzv_endpoint", "rdzv_id")


def launch_options(params: str, environ: Mapping[str, str]) -> list[str]:
    """torchrun's options from the launch keys of the params file `params`, leaving out
    each one whose `PET_*` variable is set in `environ` (torchrun reads that instead)."""
    cfg, pipeline = load_params(params)
    settings = {
        "nproc_per_node": pipeline.get("nproc", 1),
        "nnodes": cfg.nnodes,
        **{key: getattr(cfg, key) for key in RENDEZVOUS},
        "max_restarts": cfg.max_restarts,
    }
    nnodes = environ.get("PET_NNODES", str(cfg.nnodes))
    endpoint = environ.get("PET_RDZV_ENDPOINT", cfg.rdzv_endpoint)
    standalone = nnodes in ("1", "1:1") and not endpoint
    if not standalone and not endpoint:
        raise ConfigError(
            f"nnodes={nnodes} needs a rendezvous: set rdzv_endpoint (host:port of node 0) "
            "in params, or PET_RDZV_ENDPOINT"
        )
    options = ["--standalone"] if standalone else []
    for key, value in settings.items():
        skip = standalone and key in RENDEZVOUS  # --standalone makes its own rendezvous
        if f"PET_{key.upper()}" not in environ and value is not None and not skip:
            options += [f"--{key}", str(value)]
    return options


def torchrun_args(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """torchrun's command line for ours: `--params FILE` first becomes `launch_options`."""
    if argv[:1] != ["--params"]:
        return list(argv)
    if len(argv) < 2:
        raise ConfigError("--params needs the params file (params.yaml)")
    return [*launch_options(argv[1], environ), *argv[2:]]


def main(argv: Sequence[str] | None = None) -> int:
    """Launch as `torchrun` would with our command line; return the exit status."""
    try:
        options = torchrun_args(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args = torchrun.parse_args(options)  # PET_* variables already read into the defaults
    if args.log_dir is not None or args.redirects != "0" or args.tee != "0":
        return launch(args)
    args.log_dir = tempfile.mkdtemp(prefix="torchelastic_")
    try:
        return launch(args)
    finally:
        shutil.rmtree(args.log_dir)


def launch(args: argparse.Namespace) -> int:
    """torchrun with the parsed `args`; the exit status, a failed worker in one line."""
    try:
        torchrun.run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        print(f"error: {err.name} rank {rank} {how} (its error is above)", file=sys.stderr)
        return 128 - code if code < 0 else code or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
