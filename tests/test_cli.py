"""The `jepa` / `torchwm` command line: flag generation, real tiny runs, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from dataclasses import fields

import pytest
import yaml
from test_evaluate import TINY, tiny_fields

import jepa.train
from jepa import cli
from jepa.config import JEPAConfig


def parse(*argv: str) -> JEPAConfig:
    """Config of `jepa <argv>` without running anything."""
    return cli.build_config(cli.build_parser().parse_args(list(argv)))


def flags(values: dict) -> list[str]:
    """`{"epochs": 1, "progress": False}` → `["--epochs", "1", "--progress", "false"]`."""
    out = []
    for key, value in values.items():
        words = value if isinstance(value, (list, tuple)) else [value]
        out += [f"--{key}", *("none" if w is None else str(w).lower() for w in words)]
    return out


def sample_value(name: str, default: typing.Any) -> typing.Any:
    """A value of the field's type that differs from its default."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, tuple):
        return (0.25, 0.5)
    if isinstance(default, float):
        return default + 0.5
    if isinstance(default, int):
        return default + 1
    if default is None:  # Optional: int, float or str
        hint = typing.get_type_hints(JEPAConfig)[name]
        return {int: 7, float: 0.5, str: "s3://b/p"}[typing.get_args(hint)[0]]
    return f"{default}-x"


# ---- flags → config ---------------------------------------------------------------------------


def test_every_config_field_is_a_flag():
    defaults = JEPAConfig()
    parser = cli.build_parser()
    for f in fields(JEPAConfig):
        value = sample_value(f.name, getattr(defaults, f.name))
        args = parser.parse_args(["train", *flags({f.name: value})])
        parsed = getattr(args, f.name)
        assert (tuple(parsed) if isinstance(value, tuple) else parsed) == value, f.name
        assert [k for k in vars(args) if k in {g.name for g in fields(JEPAConfig)}] == [f.name]


def test_flag_forms_map_to_typed_fields():
    cfg = parse(
        "train", "--dataset", "fashion_mnist", "--batch-size", "32", "--batch_size", "48",
        "--no-progress", "--download", "--qkv_bias", "false", "--enc_mask_scale", "0.15", "0.2",
        "--final_weight_decay", "none", "--clip-grad", "None", "--lr", "2e-4", "--max_steps", "5",
    )  # fmt: skip
    assert cfg.dataset == "fashion_mnist" and cfg.batch_size == 48  # the last flag wins
    assert (cfg.progress, cfg.download, cfg.qkv_bias) == (False, True, False)
    assert cfg.enc_mask_scale == (0.15, 0.2)
    assert cfg.final_weight_decay is None and cfg.clip_grad is None
    assert (cfg.lr, cfg.max_steps) == (2e-4, 5)
    assert parse("train", "--model", "vit_small").embed_dim == 384  # presets resize


def test_preset_and_config_file_are_the_base(tmp_path):
    cfg = parse("train", "--preset", "fmnist_w192", "--epochs", "3")
    assert (cfg.dataset, cfg.embed_dim, cfg.epochs) == ("fashion_mnist", 192, 3)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"dataset": "cifar10", "epochs": 7, "lr": 1e-3}))
    cfg = parse("eval", "--config", str(params), "--lr", "5e-4")
    assert (cfg.dataset, cfg.epochs, cfg.lr) == ("cifar10", 7, 5e-4)
    assert parse("train") == JEPAConfig()


def test_help_lists_fields_with_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for expected in ("--batch_size", "--batch-size", "--enc_mask_scale MIN MAX",
                     "(default: 64)", "(default: 0.85 1.0)", "--config", "--preset"):  # fmt: skip
        assert expected in text


def test_torchwm_seed_command_maps_to_the_config(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(jepa.train, "pretrain", lambda cfg, **_: seen.append(cfg) or {"steps": 0})
    argv = ["train", "jepa", "--dataset", "imagenet1k", "--epochs", "100", "--batch_size", "64"]
    assert cli.torchwm_main(argv) == 0
    (cfg,) = seen
    assert (cfg.dataset, cfg.epochs, cfg.batch_size) == ("imagenet1k", 100, 64)
    assert json.loads(capsys.readouterr().out) == {"steps": 0}
    assert cli.torchwm_main(["train", "dreamer", "--epochs", "1"]) == 2
    assert "unknown model 'dreamer'" in capsys.readouterr().err


# ---- real runs --------------------------------------------------------------------------------


def test_train_then_eval_for_real(tmp_path, capsys):
    common = flags(tiny_fields(tmp_path))
    assert cli.main(["train", *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    out = tmp_path / "out"
    assert summary["steps"] == 48 // TINY["batch_size"]
    assert (out / "encoder" / "encoder.json").is_file()
    status = cli.main(["eval", *common, "--read_checkpoint", str(out), "--no-baselines"])
    assert status == 0
    assert "pretrained: linear probe top-1" in capsys.readouterr().out
    metrics = json.loads((out / "eval" / "probe" / "pretrained.json").read_text())
    assert 0 <= metrics["top1"] <= 1 and not (out / "eval" / "probe" / "pixels.json").exists()
    assert (out / "eval" / "results.md").is_file()


def test_extract_probe_report_commands(tmp_path, capsys):
    common = flags(tiny_fields(tmp_path))
    feats, metrics_file = tmp_path / "pixels", tmp_path / "pixels.json"
    assert cli.main(["extract", *common, "--kind", "pixels", "--out", str(feats)]) == 0
    assert json.loads(capsys.readouterr().out)["features_shape"]["train"] == [48, 784]
    assert cli.main(["probe", *common, "--features", str(feats), "--out", str(metrics_file)]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] >= 0.9
    assert cli.main(["report", f"px={metrics_file}", "--out", str(tmp_path / "table")]) == 0
    assert "px: raw pixels" in (tmp_path / "table" / "results.md").read_text()


# ---- errors -----------------------------------------------------------------------------------


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jepa.cli", *argv], capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess | str, *needles: str) -> None:
    err = result if isinstance(result, str) else result.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_errors_are_one_line_in_a_subprocess(tmp_path):
    bad_flag = run_cli("train", "--batch_sise", "64")
    assert bad_flag.returncode == 2
    assert_one_line_error(bad_flag, "unrecognized arguments: --batch_sise")
    missing = run_cli("train", "--dataset", "fashion_mnist", "--root_path", str(tmp_path / "no"))
    assert missing.returncode == 1
    assert_one_line_error(missing, "jepa train: error:", "Fashion-MNIST", "not found")


def test_errors_are_one_line_in_process(tmp_path, capsys):
    assert cli.main(["train", "--dataset", "mnist"]) == 2
    assert_one_line_error(capsys.readouterr().err, "dataset='mnist'")
    assert cli.main(["eval", "--subset", "5"]) == 2
    assert_one_line_error(capsys.readouterr().err, "`subset` was renamed to `pretrain_subset`")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--epochs", "zero"])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "--epochs", "expected an integer")
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"\x00 not a checkpoint")
    common = flags(tiny_fields(tmp_path))
    assert cli.main(["eval", *common, "--read_checkpoint", str(garbage)]) == 1
    assert_one_line_error(capsys.readouterr().err, "jepa eval: error:", str(garbage))
    assert cli.main(["eval", *common, "--read_checkpoint", str(tmp_path / "gone.pt")]) == 1
    assert_one_line_error(capsys.readouterr().err, "does not exist")
    with pytest.raises(Exception, match="model.pt"):  # --debug: the real exception
        cli.main(["eval", *common, "--read_checkpoint", str(garbage), "--debug"])
