"""Checkpoints: round trip, atomicity, corrupt files, config guard, export, official format."""

from __future__ import annotations

import copy
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from jepa import checkpoint as ckpt
from jepa.checkpoint import CheckpointError
from jepa.config import JEPAConfig
from jepa.models import VisionTransformer, build_encoder, build_predictor


@pytest.fixture(scope="module")
def cfg() -> JEPAConfig:
    return JEPAConfig.preset("fmnist_w192").replace(
        model="custom",
        depth=2,
        embed_dim=48,
        num_heads=3,
        pred_depth=1,
        pred_embed_dim=24,
        pred_num_heads=3,
    )


@pytest.fixture(scope="module")
def parts(cfg: JEPAConfig) -> dict:
    """Tiny encoder/predictor/target and an AdamW that has taken one step (so it has state).

    Shared by the module's tests, which only read it.
    """
    torch.manual_seed(0)
    encoder, predictor = build_encoder(cfg), build_predictor(cfg)
    target = copy.deepcopy(encoder)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *predictor.parameters()], lr=cfg.lr)
    x = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    loss = encoder(x).square().mean() + sum(p.square().sum() for p in predictor.parameters())
    loss.backward()
    optimizer.step()
    return dict(encoder=encoder, predictor=predictor, target_encoder=target, optimizer=optimizer)


def save(path: Path, cfg: JEPAConfig, parts: dict, **kwargs) -> None:
    kwargs = {"step": 7, "epoch": 1, "rng": ckpt.capture_rng_state(), **kwargs}
    ckpt.save_checkpoint(path, cfg=cfg, **parts, **kwargs)


def assert_same(a, b, where: str = "") -> None:
    """Recursive equality of nested dicts/lists/tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def draws() -> tuple:
    return torch.rand(3), random.random(), np.random.rand(3).tolist(), np.random.randn()


# --------------------------------------------------------------------------- round trip


def test_round_trip_restores_everything(tmp_path: Path, cfg: JEPAConfig, parts: dict) -> None:
    path = tmp_path / "ckpt.pt"
    np.random.randn()  # leave a cached gaussian in numpy's state
    rng = ckpt.capture_rng_state()
    expected = draws()
    save(path, cfg, parts, rng=rng, step=123, epoch=4, extra={"loss": 0.5, "hist": [1, 2]})

    state = ckpt.load_checkpoint(path, cfg=cfg)
    assert (state["step"], state["epoch"]) == (123, 4)
    for name in ("encoder", "predictor", "target_encoder"):
        assert_same(state[name], parts[name].state_dict(), name)
    assert_same(state["optimizer"], parts["optimizer"].state_dict(), "optimizer")
    assert state["optimizer"]["state"], "AdamW should have per-parameter state after a step"
    assert state["encoder_args"] == parts["encoder"].model_args()
    assert state["predictor_args"] == parts["predictor"].model_args()
    assert state["config"] == cfg.to_dict() and state["config_hash"] == cfg.training_hash()
    assert state["extra"] == {"loss": 0.5, "hist": [1, 2]}

    ckpt.restore_rng_state(state["rng"])
    assert_same(draws(), expected, "draws after restore")

    # The loaded optimizer state continues training in fresh modules.
    fresh = {name: copy.deepcopy(parts[name]) for name in ("encoder", "predictor")}
    opt = torch.optim.AdamW([*fresh["encoder"].parameters(), *fresh["predictor"].parameters()])
    opt.load_state_dict(state["optimizer"])
    assert opt.param_groups[0]["lr"] == cfg.lr


def test_wrapped_modules_are_saved_unwrapped(tmp_path: Path, cfg: JEPAConfig, parts: dict) -> None:
    wrapped = dict(parts, encoder=nn.DataParallel(parts["encoder"]))
    save(tmp_path / "ckpt.pt", cfg, wrapped)
    state = ckpt.load_checkpoint(tmp_path / "ckpt.pt")
    assert set(state["encoder"]) == set(parts["encoder"].state_dict())
    assert state["encoder_args"] == parts["encoder"].model_args()


def test_everything_loads_weights_only(tmp_path: Path, cfg: JEPAConfig, parts: dict) -> None:
    save(tmp_path / "ckpt.pt", cfg, parts)
    torch.load(tmp_path / "ckpt.pt", weights_only=True)  # raises if anything is not plain


# --------------------------------------------------------------------------- atomicity


def test_failing_save_keeps_previous_checkpoint(
    tmp_path: Path, cfg: JEPAConfig, parts: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    save(path, cfg, parts, step=1)
    before = path.read_bytes()
    real_save = torch.save

    def half_then_crash(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        data = Path(f).read_bytes()
        Path(f).write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save(path, cfg, parts, step=2)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert ckpt.load_checkpoint(path)["step"] == 1


def test_unpicklable_object_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "obj.pt"
    ckpt.atomic_save({"a": torch.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception, match="pickle|local"):
        ckpt.atomic_save({"a": torch.ones(2), "f": lambda: 0}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["obj.pt"]


def test_non_plain_extra_is_refused_before_writing(
    tmp_path: Path, cfg: JEPAConfig, parts: dict
) -> None:
    path = tmp_path / "ckpt.pt"
    with pytest.raises(CheckpointError, match=r"\['extra'\]\['loss'\] is a numpy") as err:
        save(path, cfg, parts, extra={"loss": np.float64(0.5)})
    assert str(path) in str(err.value)
    assert not path.exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- bad files


def test_truncated_checkpoint_names_the_file(tmp_path: Path, cfg: JEPAConfig, parts: dict) -> None:
    path = tmp_path / "ckpt.pt"
    save(path, cfg, parts)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        ckpt.load_checkpoint(path, cfg=cfg)
    assert str(path) in str(err.value) and "Delete" in str(err.value)


def test_random_bytes_raise(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_missing_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="does not exist") as err:
        ckpt.load_checkpoint(path)
    assert str(path) in str(err.value)


def test_foreign_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(3)}, path)
    with pytest.raises(CheckpointError, match="not a jepa training checkpoint"):
        ckpt.load_checkpoint(path)


# --------------------------------------------------------------------------- config guard


def test_changed_training_field_is_refused(tmp_path: Path, cfg: JEPAConfig, parts: dict) -> None:
    path = tmp_path / "ckpt.pt"
    save(path, cfg, parts)
    changed = cfg.replace(lr=cfg.lr * 2)
    with pytest.raises(CheckpointError) as err:
        ckpt.load_checkpoint(path, cfg=changed)
    message = str(err.value)
    assert f"lr: saved {cfg.lr!r}, current {changed.lr!r}" in message
    assert str(path) in message and "output_dir" in message and "resume: false" in message
    assert "num_workers" not in message


def test_changed_runtime_field_still_loads(tmp_path: Path, cfg: JEPAConfig, parts: dict) -> None:
    path = tmp_path / "ckpt.pt"
    save(path, cfg, parts)
    runtime = cfg.replace(num_workers=cfg.num_workers + 3, log_every=1)
    assert ckpt.load_checkpoint(path, cfg=runtime)["step"] == 7


# --------------------------------------------------------------------------- export


def test_export_and_load_encoder(tmp_path: Path, cfg: JEPAConfig, parts: dict) -> None:
    encoder = parts["encoder"].eval()
    out = ckpt.export_encoder(encoder, tmp_path / "export", meta={"step": 7})
    assert json.loads((out / "encoder.json").read_text()) == {
        "model_args": encoder.model_args(),
        "step": 7,
    }
    x = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        expected = encoder(x)
        for source in (out, out / "encoder.safetensors", out / "encoder.json"):
            assert torch.equal(ckpt.load_encoder(source)(x), expected), source
        (out / "encoder.json").unlink()  # the weights file alone carries model_args too
        assert torch.equal(ckpt.load_encoder(out / "encoder.safetensors")(x), expected)


def test_load_encoder_from_training_checkpoint(
    tmp_path: Path, cfg: JEPAConfig, parts: dict
) -> None:
    path = tmp_path / "ckpt.pt"
    save(path, cfg, parts)
    x = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        for which in ("encoder", "target_encoder"):
            model = ckpt.load_encoder(path, which=which)
            assert torch.equal(model(x), parts[which].eval()(x))
    with pytest.raises(CheckpointError, match="predictor"):
        ckpt.load_encoder(path, which="predictor")


# --------------------------------------------------------------------------- official I-JEPA


def official_sincos(dim: int, grid: int) -> torch.Tensor:
    """The official code's table: meshgrid(grid_w, grid_h) puts the column in the first half."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=float) / (dim / 4))
    cols, rows = np.meshgrid(np.arange(grid, dtype=float), np.arange(grid, dtype=float))
    halves = []
    for pos in (cols.reshape(-1), rows.reshape(-1)):
        out = np.einsum("m,d->md", pos, omega)
        halves.append(np.concatenate([np.sin(out), np.cos(out)], 1))
    return torch.from_numpy(np.concatenate(halves, 1)).float()[None]


def write_official(path: Path, source: VisionTransformer) -> None:
    """A checkpoint in the official release layout (DDP `module.` keys, pos_embed stored)."""
    weights = {f"module.{k}": v for k, v in source.state_dict().items()}
    weights["module.pos_embed"] = source.pos_embed.clone()
    torch.save(
        {
            "encoder": weights,
            "predictor": {"module.mask_token": torch.zeros(1, 1, 8)},
            "target_encoder": copy.deepcopy(weights),
            "opt": {"state": {}, "param_groups": []},
            "scaler": None,
            "epoch": 3,
            "loss": 0.25,
            "batch_size": 16,
            "world_size": 1,
            "lr": 1e-3,
        },
        path,
    )


@pytest.fixture
def official_source() -> VisionTransformer:
    torch.manual_seed(1)
    # Width 192 is an official width (vit_tiny): num_heads comes from the default table.
    return VisionTransformer(
        image_size=28, patch_size=4, in_chans=1, embed_dim=192, depth=2, num_heads=3
    ).eval()


def test_official_checkpoint_loads_exactly(
    tmp_path: Path, official_source: VisionTransformer
) -> None:
    path = tmp_path / "IN1K-vit.t.4-300e.pth.tar"
    write_official(path, official_source)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = official_source(x)
        for load in (ckpt.load_official_checkpoint, ckpt.load_encoder):
            model = load(path)
            assert model.model_args() == official_source.model_args()
            assert torch.equal(model(x), expected), load.__name__


def test_official_sincos_layout_is_ours(tmp_path: Path, official_source: VisionTransformer) -> None:
    # Our table is the official formula (columns first), so official weights load as-is.
    torch.testing.assert_close(official_sincos(192, 7), official_source.pos_embed)
    path = tmp_path / "official.pth.tar"
    write_official(path, official_source)
    x = torch.randn(2, 1, 28, 28)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = ckpt.load_official_checkpoint(path, which="encoder")
    with torch.no_grad():
        assert torch.allclose(model(x), official_source(x), atol=1e-6)


def test_non_sincos_position_table_is_kept_with_a_warning(
    tmp_path: Path, official_source: VisionTransformer
) -> None:
    torch.manual_seed(5)
    official_source.pos_embed.copy_(torch.randn_like(official_source.pos_embed))
    path = tmp_path / "learned.pth.tar"
    write_official(path, official_source)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), pytest.warns(UserWarning, match="not sin-cos"):
        model = ckpt.load_official_checkpoint(path, which="encoder")
        assert torch.allclose(model(x), official_source(x), atol=1e-6)
        # The export keeps that table, so the round trip stays exact.
        out = ckpt.export_encoder(model, tmp_path / "export")
        assert torch.allclose(ckpt.load_encoder(out)(x), official_source(x), atol=1e-6)


def test_official_unusual_width_needs_num_heads(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = VisionTransformer(
        image_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=1, num_heads=4, mlp_ratio=2.0
    ).eval()
    path = tmp_path / "odd.pth.tar"
    write_official(path, source)
    with pytest.raises(CheckpointError, match="pass num_heads"):
        ckpt.load_official_checkpoint(path)
    model = ckpt.load_official_checkpoint(path, num_heads=4)
    assert model.model_args() == source.model_args()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
