"""dvclive adapter: a step logger for `jepa.train.pretrain(loggers=[...])`.

`LiveLogger(dir)` is a callable that receives the rows `pretrain` logs (training rows
`{"step", "epoch", "loss", "lr", "wd", "momentum", "images_per_s", "elapsed_s"}` and
diagnostics rows `{"step", "target_std", "effective_rank", "pred_std"}`) and writes each
number as a dvclive metric at the row's own `step`:

    dir/plots/metrics/<name>.tsv   one `step<TAB>value` row per logged step (`dvc plots`)
    dir/metrics.json               the latest value of every metric (dvclive's summary)

Steps come from the rows, not from dvclive's counter, so the x axis is the optimizer
step whatever the logging cadence. A resumed run replays the steps after its last
checkpoint; the rows a crashed run wrote for those steps are dropped when the first row
of the resumed run arrives (every row with `step >= ` that row's step), so no step is
ever written twice. A fresh run's first row is step 1, which drops everything.

dvclive's own dvc.yaml writing is off (`dvcyaml=False`): the pipeline's dvc.yaml declares
these plots, and a stage must not edit the dvc.yaml that is running it.

Where to run it: inside the DVC repository (the pipeline's stages), or outside any git
repository. Opened inside a git repository that has no `.dvc/`, dvclive (3.49) runs
`dvc init` there on its own.
"""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path
from typing import Any

from jepa.io import atomic_write

# Logged in the summary but not plotted: they are not functions of training progress.
SUMMARY_ONLY = frozenset({"epoch", "elapsed_s"})


def drop_rows_from(metrics_dir: str | Path, step: int) -> int:
    """Remove rows with `step >= step` from every dvclive `.tsv` under `metrics_dir`.

    Returns the number of rows removed. Files are rewritten atomically.
    """
    removed = 0
    for path in sorted(Path(metrics_dir).rglob("*.tsv")):
        if path.name.startswith("."):
            continue  # the temporary file of a write that was killed (jepa.io keeps suffixes)
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
            fieldnames = list(rows[0]) if rows else None
        kept = [row for row in rows if int(row["step"]) < step]
        if len(kept) == len(rows):
            continue
        removed += len(rows) - len(kept)
        atomic_write(path, functools.partial(_write_tsv, fieldnames, kept))
    return removed


def _write_tsv(fieldnames: list[str] | None, rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames, delimiter="\t", lineterminator=os.linesep)
        writer.writeheader()
        writer.writerows(rows)


class LiveLogger:
    """Step logger writing `pretrain` rows to dvclive (see the module docstring).

    `dvclive.Live` is opened on the first row, so ranks that never log (DDP ranks > 0)
    never touch the directory. Call `close()` (or use `with`) at the end of the run.
    """

    def __init__(self, dir: str | Path, *, dvcyaml: str | bool = False) -> None:  # noqa: A002
        self.dir = Path(dir)
        self.dvcyaml = dvcyaml
        self.live: Any = None
        self.dropped_rows = 0

    def _open(self, first_step: int) -> None:
        from dvclive import Live  # imports dvc: only the process that logs pays for it

        self.dropped_rows = drop_rows_from(self.dir / "plots" / "metrics", first_step)
        self.live = Live(
            dir=str(self.dir),
            resume=True,
            save_dvc_exp=False,
            dvcyaml=self.dvcyaml,
            monitor_system=False,
        )

    def __call__(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        if self.live is None:
            self._open(step)
        self.live.step = step
        for name, value in row.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.live.log_metric(name, value, plot=name not in SUMMARY_ONLY)
        self.live.make_summary()

    def close(self) -> None:
        """Write the final summary (no-op on a process that never logged)."""
        if self.live is not None:
            self.live.end()
            self.live = None

    def __enter__(self) -> LiveLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
