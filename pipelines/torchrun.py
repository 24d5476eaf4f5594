"""`torchrun` for the stages: the same launcher and arguments, with a failed worker
reported in one line instead of torchrun's traceback.

    python -m pipelines.torchrun --standalone --nproc_per_node N -m pipelines.pretrain ...

A worker that fails has already said why (a stage main prints one `error:` line,
`pipelines.common.run_main`); torchrun would follow it with the traceback of its own
`ChildFailedError`, which says nothing more and buries the line that matters. The launcher
runs in this process, so the workers' parent-death signal (`jepa.distributed`) still
ties them to it. The exit status is the failed worker's (128 + N for signal N).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError


def main(argv: Sequence[str] | None = None) -> int:
    """Launch as `torchrun argv` does; return the exit status."""
    args = torchrun.parse_args(list(sys.argv[1:] if argv is None else argv))
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
