"""The seed document's Python API: `create_model("jepa", ...)` and `JEPAAgent(cfg)`.

    import torchwm
    agent = torchwm.create_model("jepa", dataset="imagenet", batch_size=64, epochs=100)
    agent.train()                      # I-JEPA pretraining; returns the run summary

    cfg.eval = True
    cfg.read_checkpoint = "./output/checkpoint.pth"
    agent.train()                      # now: linear probe + k-NN of that checkpoint

A run writes under `cfg.output_dir`: `checkpoints/latest.pt`, `encoder/` (the exported
target encoder), `metrics.jsonl` and `summary.json`. `read_checkpoint` may name any of
those, the output directory itself, or an official I-JEPA release; the seed's
`<output_dir>/checkpoint.pth`, when no such file exists, means the run in `<output_dir>`.

This module imports only `jepa.config` at import time; training and evaluation (torch,
torchvision, scikit-learn) load on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from jepa.config import ConfigError, JEPAConfig

if TYPE_CHECKING:
    from jepa.models import VisionTransformer

MODEL_NAMES = ("jepa", "ijepa", "i-jepa")


def create_model(
    name: str = "jepa",
    *,
    config: JEPAConfig | None = None,
    preset: str | None = None,
    **fields: Any,
) -> JEPAAgent:
    """A `JEPAAgent` for model `name` ("jepa").

    The config is `config` (or the named `preset`, an experiment of jepa/conf such as
    "fmnist_w192": `JEPAConfig.preset`; or `JEPAConfig()` defaults) with `fields` overriding
    it; an unknown field or a wrong type raises `ConfigError` naming it.
    """
    if not isinstance(name, str) or name.lower() not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; available: 'jepa'")
    if config is not None and preset is not None:
        raise ConfigError("pass either config or preset, not both")
    if config is not None:
        cfg = config.replace(**fields)
    elif preset is not None:
        cfg = JEPAConfig.preset(preset, **fields)
    else:
        cfg = JEPAConfig.from_dict(fields)
    return JEPAAgent(cfg)


class JEPAAgent:
    """I-JEPA pretraining and frozen-feature evaluation driven by one `JEPAConfig`.

    The agent keeps the config object it is given, so fields set on it afterwards
    (`cfg.eval = True`) take effect at the next call.
    """

    def __init__(self, cfg: JEPAConfig | None = None) -> None:
        if cfg is not None and not isinstance(cfg, JEPAConfig):
            raise TypeError(f"JEPAAgent expects a JEPAConfig, got {type(cfg).__name__}")
        self.cfg = cfg if cfg is not None else JEPAConfig()
        self.summary: dict | None = None
        self.metrics: dict | None = None

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"JEPAAgent(dataset={c.dataset!r}, model={c.model!r}, epochs={c.epochs}, "
            f"batch_size={c.batch_size}, output_dir={c.output_dir!r})"
        )

    def train(self) -> dict:
        """Pretrain and return the run summary; with `cfg.eval` set, evaluate
        `cfg.read_checkpoint` instead, print the accuracies and return the metrics."""
        self.cfg.validate()  # attribute assignment checks types; ranges are checked here
        if self.cfg.eval:
            metrics = self.evaluate()
            print(format_metrics(metrics))
            return metrics
        from jepa.train import pretrain

        self.summary = pretrain(self.cfg)
        return self.summary

    def evaluate(
        self,
        checkpoint: str | Path | None = None,
        *,
        out_dir: str | Path | None = None,
        baselines: bool = True,
    ) -> dict:
        """Linear probe and k-NN of a checkpoint's frozen target encoder (`jepa.evaluate`).

        `checkpoint` defaults to `cfg.read_checkpoint`, else this agent's `output_dir`;
        results go to `out_dir` (default `<output_dir>/eval`). `baselines` adds the
        raw-pixel and random-init encoders to the comparison.
        """
        from jepa.evaluate import evaluate

        self.cfg.validate()
        out = Path(out_dir) if out_dir is not None else Path(self.cfg.output_dir) / "eval"
        self.metrics = evaluate(
            self.cfg,
            self.checkpoint_path(checkpoint),
            out,
            baselines=baselines,
            summary=self.summary,
        )
        return self.metrics

    def checkpoint_path(self, checkpoint: str | Path | None = None) -> Path:
        """The encoder to evaluate: `checkpoint`, `cfg.read_checkpoint`, or `output_dir`."""
        from jepa.evaluate import resolve_checkpoint

        chosen = checkpoint or self.cfg.read_checkpoint or self.cfg.output_dir
        return resolve_checkpoint(chosen)

    def load_encoder(self, checkpoint: str | Path | None = None) -> VisionTransformer:
        """The frozen target encoder (eval mode) of `checkpoint` (see `checkpoint_path`);
        `encoder.forward_features(images)` gives `(B, D)` features for downstream tasks."""
        from jepa.evaluate import load_pretrained

        return load_pretrained(self.cfg, self.checkpoint_path(checkpoint))


def format_metrics(results: dict) -> str:
    """One line per evaluated encoder: linear-probe and k-NN top-1 in percent."""
    lines = []
    for kind in ("pretrained", "pixels", "random"):
        m = results.get(kind)
        if m:
            lines.append(
                f"{kind:>10}: linear probe top-1 {100 * m['top1']:.2f}%  "
                f"k-NN top-1 {100 * m['knn_top1']:.2f}%  ({m['n_train']} train / "
                f"{m['n_test']} test images, {m['feature_dim']}-d features)"
            )
    if results.get("report"):
        lines.append(f"results table: {results['report']['markdown']}")
    return "\n".join(lines)
