"""Checkpoints (jepa.checkpoint, jepa.export, jepa.official): round trip, atomicity, corrupt files,
config guard, export, official format, and files written by earlier versions."""

from __future__ import annotations

import copy
import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_config
from torch import nn

from jepa import checkpoint as ckpt
from jepa import export, official
from jepa.checkpoint import CheckpointError
from jepa.config import JEPAConfig
from jepa.models import VisionTransformer, apply_masks, build_encoder, build_predictor

# Files written by an earlier version of the library (tests/fixtures/make_fixtures.py).
FIXTURES = Path(__file__).parent / "fixtures" / "v1"


@pytest.fixture(scope="module")
def cfg() -> JEPAConfig:
    return tiny_config(embed_dim=48, num_heads=3, pred_embed_dim=24, pred_num_heads=3)


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
    out = export.export_encoder(encoder, tmp_path / "export", meta={"step": 7})
    assert json.loads((out / "encoder.json").read_text()) == {
        "model_args": encoder.model_args(),
        "step": 7,
    }
    x = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        expected = encoder(x)
        for source in (out, out / "encoder.safetensors", out / "encoder.json"):
            assert torch.equal(export.load_encoder(source)(x), expected), source
        (out / "encoder.json").unlink()  # the weights file alone carries model_args too
        assert torch.equal(export.load_encoder(out / "encoder.safetensors")(x), expected)


def test_load_encoder_from_training_checkpoint(
    tmp_path: Path, cfg: JEPAConfig, parts: dict
) -> None:
    path = tmp_path / "ckpt.pt"
    save(path, cfg, parts)
    x = torch.randn(2, cfg.in_chans, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        for which in ("encoder", "target_encoder"):
            model = export.load_encoder(path, which=which)
            assert torch.equal(model(x), parts[which].eval()(x))
    with pytest.raises(CheckpointError, match="predictor"):
        export.load_encoder(path, which="predictor")


# --------------------------------------------------------------------------- old files


def fixture_groups(encoder: nn.Module, predictor: nn.Module) -> list[dict]:
    """The fixture run's AdamW groups: decay on matrices, then biases and 1-D parameters."""
    named = [*encoder.named_parameters(), *predictor.named_parameters()]
    no_decay = [p for name, p in named if p.ndim <= 1 or name.endswith(".bias")]
    decay = [p for name, p in named if not (p.ndim <= 1 or name.endswith(".bias"))]
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def test_old_checkpoint_loads_with_its_own_config() -> None:
    path = FIXTURES / "run" / "checkpoints" / "latest.pt"
    cfg = JEPAConfig.from_dict(ckpt.load_checkpoint(path)["config"])
    state = ckpt.load_checkpoint(path, cfg=cfg)  # the config-hash guard accepts it
    assert (state["step"], state["epoch"]) == (2, 0)
    assert state["encoder_args"] == build_encoder(cfg).model_args()
    assert state["predictor_args"] == build_predictor(cfg).model_args()


def test_old_checkpoint_resumes_one_more_step() -> None:
    path = FIXTURES / "run" / "checkpoints" / "latest.pt"
    cfg = JEPAConfig.from_dict(ckpt.load_checkpoint(path)["config"])
    state = ckpt.load_checkpoint(path, cfg=cfg)
    encoder, predictor, target = build_encoder(cfg), build_predictor(cfg), build_encoder(cfg)
    for model, name in ((encoder, "encoder"), (predictor, "predictor"), (target, "target_encoder")):
        model.load_state_dict(state[name], strict=True)
    optimizer = torch.optim.AdamW(fixture_groups(encoder, predictor), lr=cfg.lr)
    optimizer.load_state_dict(state["optimizer"])
    # load_state_dict pairs parameters with saved moments by position only: check the shapes.
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert optimizer.state[p]["exp_avg"].shape == p.shape
    ckpt.restore_rng_state(state["rng"])

    # One I-JEPA step on the 2x2 patch grid: context patches 0-2 predict patch 3.
    images = torch.randn(4, cfg.in_chans, cfg.image_size, cfg.image_size)
    context, targets = [torch.tensor([[0, 1, 2]] * 4)], [torch.tensor([[3]] * 4)]
    with torch.no_grad():
        h = apply_masks(target(images), targets)
    z = predictor(encoder(images, context), context, targets)
    loss = nn.functional.smooth_l1_loss(z, nn.functional.layer_norm(h, (h.size(-1),)))
    before = [p.detach().clone() for p in encoder.parameters()]
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, encoder.parameters(), strict=True))
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {state["step"] + 1}  # the moments continued from the saved step


def test_old_run_resumes_through_pretrain(tmp_path, monkeypatch, caplog) -> None:
    """The training loop itself continues a v1 run (written before `subset` was renamed
    and before checkpoints carried their log) from its step-2 checkpoint."""
    import logging
    import shutil

    from fmnist_data import write_tiny_fmnist

    from jepa.train import pretrain

    monkeypatch.chdir(tmp_path)  # the fixture's config names relative paths: data/, run/
    write_tiny_fmnist(Path("data"), num_train=64, num_test=16)
    shutil.copytree(FIXTURES / "run", "run")
    stored = ckpt.load_checkpoint(Path("run/checkpoints/latest.pt"))["config"]
    with caplog.at_level(logging.INFO, logger="jepa.train"):
        summary = pretrain(JEPAConfig.from_dict(stored).replace(max_steps=3))
    assert "at step 2" in caplog.text and summary["steps"] == 3
    assert ckpt.load_checkpoint(Path("run/checkpoints/latest.pt"))["version"] == ckpt.VERSION


def test_old_encoder_export_gives_the_saved_features() -> None:
    from safetensors.torch import load_file

    saved = load_file(FIXTURES / "features.safetensors")
    with torch.no_grad():
        for source in (
            FIXTURES / "run" / "encoder",
            FIXTURES / "run" / "checkpoints" / "latest.pt",
        ):
            features = export.load_encoder(source)(saved["images"])
            torch.testing.assert_close(features, saved["features"], rtol=0, atol=1e-6)


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
        for load in (official.load_official_checkpoint, export.load_encoder):
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
        model = official.load_official_checkpoint(path, which="encoder")
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
        model = official.load_official_checkpoint(path, which="encoder")
        assert torch.allclose(model(x), official_source(x), atol=1e-6)
        # The export keeps that table, so the round trip stays exact.
        out = export.export_encoder(model, tmp_path / "export")
        assert torch.allclose(export.load_encoder(out)(x), official_source(x), atol=1e-6)


def test_official_unusual_width_needs_num_heads(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = VisionTransformer(
        image_size=16, patch_size=4, in_chans=3, embed_dim=48, depth=1, num_heads=4, mlp_ratio=2.0
    ).eval()
    path = tmp_path / "odd.pth.tar"
    write_official(path, source)
    with pytest.raises(CheckpointError, match="pass num_heads"):
        official.load_official_checkpoint(path)
    model = official.load_official_checkpoint(path, num_heads=4)
    assert model.model_args() == source.model_args()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
