"""dvclive adapter: a step logger for `jepa.train.pretrain(loggers=[...])`.

`LiveLogger(dir)` is a callable that receives the rows `pretrain` logs (training rows
`{"step", "epoch", "loss", "lr", "wd", "momentum", "images_per_s", "elapsed_s"}` and
diagnostics rows `{"step", "target_std", "effective_rank", "pred_std"}`) and writes each
number as a dvclive metric at the row's own `step`:

    dir/plots/metrics/<name>.tsv   one `step<TAB>value` row per logged step (`dvc plots`)
    dir/metrics.json               the latest value of every metric (dvclive's summary)

Steps come from the rows, not from dvclive's counter, so the x axis is the optimizer
step whatever the logging cadence. The directory starts afresh at the first row: a resumed
run replays the rows its checkpoint holds (`jepa.train.RunLog.start`) before it logs new
ones, so the plots hold exactly the resumed run's steps, each once, and nothing a crashed
run logged after its last checkpoint.

dvclive's own dvc.yaml writing is off (`dvcyaml=False`): the pipeline's dvc.yaml declares
these plots, and a stage must not edit the dvc.yaml that is running it.

Where to run it: inside the DVC repository (the pipeline's stages), or outside any git
repository. Opened inside a git repository that has no `.dvc/`, dvclive (3.49) runs
`dvc init` there on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Logged in the summary but not plotted: they are not functions of training progress.
SUMMARY_ONLY = frozenset({"epoch", "elapsed_s", "monitor_s"})


class LiveLogger:
    """Step logger writing `pretrain` rows to dvclive (see the module docstring).

    `dvclive.Live` is opened on the first row, so ranks that never log (DDP ranks > 0)
    never touch the directory. Call `close()` (or use `with`) at the end of the run.
    """

    def __init__(self, dir: str | Path, *, dvcyaml: str | bool = False) -> None:  # noqa: A002
        self.dir = Path(dir)
        self.dvcyaml = dvcyaml
        self.live: Any = None

    def _open(self) -> None:
        from dvclive import Live  # imports dvc: only the process that logs pays for it

        self.live = Live(
            dir=str(self.dir),
            resume=False,  # clears earlier plots and summary
            save_dvc_exp=False,
            dvcyaml=self.dvcyaml,
            monitor_system=False,
        )

    def __call__(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        if self.live is None:
            self._open()
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
