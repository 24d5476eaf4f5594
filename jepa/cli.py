"""Command line: `jepa train|eval|extract|probe|report|compare` and the seed's `torchwm train jepa`.

    jepa train --dataset imagenet1k --root_path /data/imagenet --epochs 100 --batch_size 64
    jepa train --preset fmnist_w192 --epochs 1
    jepa eval --config params.yaml --read_checkpoint ./output
    jepa extract --kind pixels --out feats/pixels --preset fmnist_w192
    jepa probe --features feats/pixels --out feats/pixels.json --preset fmnist_w192
    jepa report output/eval other_run/eval --out results/
    jepa compare --repo . --out results/        # across `dvc exp show`'s experiments
    torchwm train jepa --dataset imagenet1k --epochs 100 --batch_size 64

Every `JEPAConfig` field is a flag generated from the dataclass (`--batch_size` or
`--batch-size`): booleans take `--flag`, `--flag false` or `--no-flag`; `(min, max)` pairs
take two numbers; optional fields take `none`. `--config FILE.yaml` or `--preset NAME` sets
the base that the flags override. Errors print one line on stderr and exit non-zero
(2: bad usage or config, 1: anything else); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from jepa import config
from jepa.api import MODEL_NAMES
from jepa.config import MODEL_SIZES, ConfigError, JEPAConfig, preset_names

# Descriptions from the seed document's config table, for fields without a source comment.
SEED_HELP = {
    "image_size": "input image size",
    "patch_size": "ViT patch size",
    "embed_dim": "embedding dimension",
    "depth": "transformer layers",
    "num_heads": "attention heads",
    "mask_ratio": "fraction of patches to mask (random masking)",
    "batch_size": "training batch size",
    "lr": "peak learning rate",
    "min_lr": "minimum learning rate",
    "warmup_epochs": "linear warmup from start_lr to lr",
    "weight_decay": "AdamW weight decay",
    "clip_grad": "gradient clipping norm (none: no clipping)",
    "epochs": "total training epochs",
    "accum_iter": "gradient accumulation steps",
    "ema": "EMA momentum range (start, end)",
    "num_enc_masks": "number of context blocks",
    "enc_mask_scale": "context block scale range",
    "num_pred_masks": "number of target blocks",
    "pred_mask_scale": "target block scale range",
    "aspect_ratio": "block aspect ratio range",
    "eval": "evaluate read_checkpoint instead of training (train command)",
    "read_checkpoint": "checkpoint, encoder export or output_dir to evaluate",
}

CHOICES = {**config.CHOICES, "model": (*MODEL_SIZES, "custom")}


class CliError(Exception):
    """A usage error found after parsing (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---- config flags ----------------------------------------------------------------------------


def field_docs() -> dict[str, tuple[str, str]]:
    """`{field: (section, comment)}` from `JEPAConfig`'s source: its section headers
    (`# ---- data ----`) and the comment after each field."""
    try:
        source = inspect.getsource(JEPAConfig)
    except (OSError, TypeError):  # no source (e.g. a frozen build): flags stay undocumented
        return {}
    docs, section = {}, "config"
    for line in source.splitlines():
        if header := re.match(r"\s*# -+ (\w[\w ]*?) -+\s*$", line):
            section = header.group(1)
        elif item := re.match(r"    (\w+): [^=]+=[^#]*(?:#\s*(.*))?$", line):
            docs[item.group(1)] = (section, (item.group(2) or "").strip())
    return docs


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _value_parser(kind: type, optional: bool) -> Callable[[str], Any]:
    """Parse one command-line word as `kind` (`none`/`null` → None when `optional`)."""
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}

    def parse(text: str) -> Any:
        if optional and text.strip().lower() in ("none", "null"):
            return None
        if kind is bool:
            return _parse_bool(text)
        try:
            return kind(text)
        except ValueError:
            hint = " or none" if optional else ""
            raise argparse.ArgumentTypeError(
                f"expected {names[kind]}{hint}, got {text!r}"
            ) from None

    return parse


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """`(type, optional)` of an annotation such as `int | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None)), True
    return hint, False


def _flag_names(name: str, prefix: str = "") -> list[str]:
    names = [f"--{prefix}{name}"]
    if "_" in name or prefix:
        names.append(f"--{prefix.replace('_', '-')}{name.replace('_', '-')}")
    return names


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `JEPAConfig` field, grouped by the dataclass's sections; a flag left out
    keeps the base config's value (its dest is absent from the namespace)."""
    hints = typing.get_type_hints(JEPAConfig)
    docs, defaults, groups = field_docs(), JEPAConfig(), {}
    for f in fields(JEPAConfig):
        section, comment = docs.get(f.name, ("config", ""))
        if section not in groups:
            groups[section] = parser.add_argument_group(f"{section} (JEPAConfig fields)")
        group = groups[section]
        kind, optional = _unwrap(hints[f.name])
        default = getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = comment or SEED_HELP.get(f.name, "")
        if f.name in CHOICES:
            text += f" [{', '.join(CHOICES[f.name])}]"
        text = f"{text} (default: {shown})".lstrip()
        common = dict(dest=f.name, default=argparse.SUPPRESS)
        if kind is bool:
            group.add_argument(
                *_flag_names(f.name), nargs="?", const=True, type=_parse_bool, metavar="BOOL",
                help=f"{text}; --no-{f.name.replace('_', '-')} sets false", **common,
            )  # fmt: skip
            group.add_argument(
                *_flag_names(f.name, "no_"), action="store_false", help=argparse.SUPPRESS, **common
            )
        elif typing.get_origin(kind) is tuple:
            group.add_argument(
                *_flag_names(f.name), nargs=2, type=_value_parser(float, False),
                metavar=("MIN", "MAX"), help=text, **common,
            )  # fmt: skip
        else:
            group.add_argument(
                *_flag_names(f.name), type=_value_parser(kind, optional),
                metavar=kind.__name__.upper(), help=text, **common,
            )  # fmt: skip
    for old in config.RENAMED_FIELDS:  # hidden: build_config names the new field
        parser.add_argument(*_flag_names(old), dest=old, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)  # fmt: skip


def build_config(args: argparse.Namespace) -> JEPAConfig:
    """The base config (`--config` file, `--preset`, or the defaults) with the given flags."""
    if args.config is not None and args.preset is not None:
        raise CliError("pass either --config or --preset, not both")
    if args.config is not None:
        base = JEPAConfig.from_yaml(args.config)
    elif args.preset is not None:
        base = JEPAConfig.preset(args.preset)
    else:
        base = JEPAConfig()
    names = [*(f.name for f in fields(JEPAConfig)), *config.RENAMED_FIELDS]
    overrides = {name: getattr(args, name) for name in names if name in args}
    return base.replace(**overrides) if overrides else base


# ---- commands --------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, cfg: JEPAConfig) -> None:
    """Pretrain (or, with --eval, evaluate read_checkpoint) and print the result."""
    from jepa.api import JEPAAgent

    result = JEPAAgent(cfg).train()  # in eval mode the agent prints the accuracies itself
    if not cfg.eval:
        print(json.dumps(result, indent=2))


def cmd_eval(args: argparse.Namespace, cfg: JEPAConfig) -> None:
    """Evaluate a checkpoint (and the baselines) and print the accuracies."""
    from jepa.api import JEPAAgent, format_metrics

    agent = JEPAAgent(cfg)
    print(format_metrics(agent.evaluate(out_dir=args.out, baselines=args.baselines)))


def cmd_extract(args: argparse.Namespace, cfg: JEPAConfig) -> None:
    """Write one encoder kind's features."""
    from jepa.api import JEPAAgent
    from jepa.evaluate import extract

    checkpoint = None  # random without read_checkpoint: the config's architecture
    if args.kind == "pretrained" or (args.kind == "random" and cfg.read_checkpoint is not None):
        checkpoint = JEPAAgent(cfg).checkpoint_path()
    meta = extract(cfg, checkpoint, args.out, kind=args.kind)
    shapes = {split: info["features_shape"] for split, info in meta["splits"].items()}
    print(json.dumps({"kind": args.kind, "out": str(args.out), "features_shape": shapes}))


def cmd_probe(args: argparse.Namespace, cfg: JEPAConfig) -> None:
    """Probe saved features and print the top-line metrics."""
    from jepa.evaluate import headline, probe

    metrics = probe(cfg, args.features, args.out)
    print(json.dumps(headline({"pretrained": metrics})["pretrained"], indent=2))


def cmd_report(args: argparse.Namespace, cfg: JEPAConfig | None) -> None:
    """Write one results table over several evaluations."""
    from jepa.report import report_evaluations

    inputs = []
    for item in args.inputs:
        name, sep, path = item.partition("=")
        inputs.append((name, Path(path)) if sep else (None, Path(item)))
    paths = report_evaluations(inputs, args.out, references=args.references)
    print(json.dumps(paths, indent=2))


def cmd_compare(args: argparse.Namespace, cfg: JEPAConfig | None) -> None:
    """Write one table across the experiments `dvc exp show` lists."""
    from jepa.compare import compare

    paths = compare(args.repo, args.out)
    print(paths["markdown"].read_text())
    print(json.dumps({name: str(path) for name, path in paths.items()}, indent=2))


# ---- parser ----------------------------------------------------------------------------------


def _shared_parsers() -> tuple[Parser, Parser]:
    """Parent parsers: `base` (--debug) and `configured` (base + --config/--preset + fields)."""
    base = Parser(add_help=False, allow_abbrev=False)
    base.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
    )
    configured = Parser(add_help=False, allow_abbrev=False, parents=[base])
    source = configured.add_argument_group("base config (flags below override it)")
    source.add_argument("--config", metavar="FILE.yaml", help="flat YAML config, e.g. params.yaml")
    source.add_argument(
        "--preset", metavar="NAME", help=f"an experiment of jepa/conf: {', '.join(preset_names())}"
    )
    add_config_flags(configured)
    return base, configured


# name: (help, takes config flags, extra usage)
COMMAND_SPECS = {
    "train": ("pretrain I-JEPA (with --eval: evaluate read_checkpoint)", True, ""),
    "eval": ("linear probe + k-NN of a checkpoint, with baselines", True,
             "[--out DIR] [--no-baselines]"),
    "extract": ("write one encoder's train/test features", True,
                "[--kind {pretrained,random,pixels}] --out DIR"),
    "probe": ("linear probe + k-NN on saved features", True, "--features DIR [--out FILE]"),
    "report": ("results table (md, csv, png) over evaluations", False, ""),
    "compare": ("one table (md, csv, png) across the DVC experiments of a repo", False, ""),
}  # fmt: skip


def _add_command_flags(commands: dict[str, Parser]) -> None:
    """The flags of each command besides the config fields."""
    p = commands["eval"]
    p.add_argument("--out", metavar="DIR", help="results folder (default: <output_dir>/eval)")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate raw pixels and a random-init encoder")  # fmt: skip
    p = commands["extract"]
    p.add_argument("--kind", choices=("pretrained", "random", "pixels"), default="pretrained",
                   help="pretrained: read_checkpoint (default: output_dir); random: same "
                   "architecture, untrained; pixels: the images")  # fmt: skip
    p.add_argument("--out", metavar="DIR", required=True, help="features folder")
    p = commands["probe"]
    p.add_argument("--features", metavar="DIR", required=True, help="folder written by extract")
    p.add_argument("--out", metavar="FILE", help="write the metrics JSON here")
    p = commands["report"]
    p.add_argument("inputs", nargs="+", metavar="[NAME=]PATH",
                   help="an eval folder (with probe/*.json) or a probe metrics JSON")  # fmt: skip
    p.add_argument("--out", metavar="DIR", required=True, help="folder for results.*")
    p.add_argument("--references", action=argparse.BooleanOptionalAction, default=True,
                   help="add published numbers for the datasets evaluated")  # fmt: skip
    p = commands["compare"]
    p.add_argument("--repo", metavar="DIR", default=".", help="the DVC repository")
    p.add_argument("--out", metavar="DIR", default="results", help="folder for experiments.*")


def build_parser(prog: str = "jepa", model_positional: bool = False) -> Parser:
    """The `jepa` parser; `model_positional` names subcommands `torchwm <cmd> jepa`."""
    parser = Parser(
        prog=prog,
        description="I-JEPA pretraining and frozen-feature evaluation.",
        epilog="examples:\n" + __doc__.split("\n\n")[1] + "\n\nCOMMAND --help lists its flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    base, configured = _shared_parsers()
    commands = {}
    for name, (help_text, with_config, usage) in COMMAND_SPECS.items():
        label = f"{prog} {name} jepa" if model_positional else f"{prog} {name}"
        if with_config:
            usage = f"%(prog)s [--config FILE.yaml | --preset NAME] [--FIELD VALUE ...] {usage}"
        commands[name] = sub.add_parser(
            name, help=help_text, description=help_text, prog=label, allow_abbrev=False,
            parents=[configured if with_config else base], usage=usage.strip() or None,
        )  # fmt: skip
    _add_command_flags(commands)
    return parser


HANDLERS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "extract": cmd_extract,
    "probe": cmd_probe,
    "report": cmd_report,
    "compare": cmd_compare,
}


# ---- entry points ----------------------------------------------------------------------------


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is the whole story (no type name needed). Library modules are
    looked up only if already imported: an error from them means they were."""
    known: list[type[BaseException]] = [ConfigError, CliError, OSError, ValueError]
    for module, name in (
        ("jepa.checkpoint", "CheckpointError"),
        ("jepa.train", "NonFiniteLossError"),
        ("jepa.runs", "RunLockedError"),
        ("jepa.storage", "StorageError"),
    ):
        if module in sys.modules:
            known.append(getattr(sys.modules[module], name))
    return tuple(known)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, _expected_errors()) else f"{type(err).__name__}: {text}"


def run(argv: Sequence[str], prog: str, model_positional: bool = False) -> int:
    """Parse `argv`, run the command; return the exit status."""
    args = build_parser(prog, model_positional).parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = build_config(args) if COMMAND_SPECS[args.command][1] else None
        HANDLERS[args.command](args, cfg)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        print(
            f"{prog} {args.command}: error: {_one_line(err)} (--debug for details)", file=sys.stderr
        )
        return 2 if isinstance(err, (ConfigError, CliError)) else 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`jepa COMMAND [flags]`; returns the exit status."""
    return run(list(sys.argv[1:] if argv is None else argv), "jepa")


def torchwm_main(argv: Sequence[str] | None = None) -> int:
    """`torchwm COMMAND MODEL [flags]` (the seed's form, MODEL = jepa); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] in COMMAND_SPECS and not argv[1].startswith("-"):
        model = argv.pop(1)
        if model.lower() not in MODEL_NAMES:
            print(f"torchwm {argv[0]}: error: unknown model {model!r}; available: jepa",
                  file=sys.stderr)  # fmt: skip
            return 2
    return run(argv, "torchwm", model_positional=True)


if __name__ == "__main__":
    sys.exit(main())
