"""The I-JEPA objective's options: multi-block regression targets, the VC and SIGReg penalties."""

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_config

from bench.train_step import every_token, step_flops
from jepa.config import ConfigError
from jepa.masks import build_collator
from jepa.models import IJEPA, vit
from jepa.models.ijepa import sigreg, variance_covariance
from jepa.models.vit import apply_masks, repeat_interleave_batch


def tiny_cfg(**kw):
    base = dict(embed_dim=48, num_heads=3, pred_embed_dim=24, pred_depth=2, pred_num_heads=3)
    return tiny_config(**{**base, **kw})


def batch(cfg, n=4):
    samples = [(torch.randn(1, 28, 28), 0, i) for i in range(n)]
    return build_collator(cfg)(samples)


def silence_residual_branches(model: IJEPA) -> None:
    """Every block becomes the identity: its output is its input."""
    with torch.no_grad():
        for blk in model.target_encoder.blocks:
            for linear in (blk.attn.proj, blk.mlp.fc2):
                linear.weight.zero_()
                linear.bias.zero_()


def test_targets_from_several_blocks_average_their_layer_norms():
    cfg = tiny_cfg(depth=3)
    b = batch(cfg)
    one = IJEPA.from_config(cfg)
    three = IJEPA.from_config(cfg.replace(target_last_blocks=3))
    three.load_state_dict(one.state_dict())
    t1 = one.forward_target(b.images, b.masks_pred, 1)
    t3 = three.forward_target(b.images, b.masks_pred, 1)
    assert t1.shape == t3.shape and not torch.allclose(t1, t3)
    # With identity blocks every block emits the same tokens, so the mean of their layer
    # norms is the single block's (the final norm starts as the identity too).
    for model in (one, three):
        silence_residual_branches(model)
    torch.testing.assert_close(
        three.forward_target(b.images, b.masks_pred, 1),
        one.forward_target(b.images, b.masks_pred, 1),
        atol=1e-4,  # the single-block target goes through the final norm's eps once more
        rtol=1e-4,
    )


@pytest.mark.parametrize("target_last_blocks", [1, 2])
def test_loss_and_gradients_equal_those_of_computing_every_token(monkeypatch, target_last_blocks):
    # The last blocks compute only the tokens the loss reads: the target encoder's at the
    # target blocks, the predictor's at the mask tokens. Nothing else may change.
    cfg = tiny_cfg(depth=2, target_last_blocks=target_last_blocks)
    b = batch(cfg, n=6)
    assert sum(m.size(1) for m in b.masks_pred) < 49  # the targets' rows are computed
    model = IJEPA.from_config(cfg)
    with torch.no_grad():  # a target encoder unlike the context encoder
        for p in model.target_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def loss_and_grads():
        model.zero_grad()
        loss, _ = model(b.images, b.masks_enc, b.masks_pred)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.trainable()}

    loss, grads = loss_and_grads()
    # every token through every block, the rows cut after, as the official networks do
    monkeypatch.setattr(vit, "run_blocks", every_token(vit.run_blocks))
    full_loss, full_grads = loss_and_grads()
    torch.testing.assert_close(loss, full_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], msg=name)


@pytest.mark.parametrize("target_size", [5, 13])  # 4 × 13 target rows ≥ 49 tokens
def test_targets_are_the_target_encoders_layer_normed_tokens_at_each_block(target_size):
    model = IJEPA.from_config(tiny_cfg(depth=2))
    images = torch.randn(2, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    masks = [
        torch.stack([torch.randperm(49, generator=g)[:target_size] for _ in range(2)])
        for _ in range(4)
    ]
    with torch.no_grad():
        tokens = model.target_encoder(images)
    tokens = F.layer_norm(tokens, (tokens.size(-1),))
    expected = repeat_interleave_batch(apply_masks(tokens, masks), 2, 3)
    torch.testing.assert_close(model.forward_target(images, masks, 3), expected)


def test_target_amp_bf16_runs_the_target_pass_alone_in_bf16():
    cfg = tiny_cfg(depth=2, target_last_blocks=2)
    b = batch(cfg)
    exact = IJEPA.from_config(cfg)
    bf16 = IJEPA.from_config(cfg.replace(target_amp="bf16"))
    bf16.load_state_dict(exact.state_dict())
    want = exact.forward_target(b.images, b.masks_pred, 1)
    got = bf16.forward_target(b.images, b.masks_pred, 1)
    # float32 out, computed in bf16: near the exact targets (layer-normed, so unit scale),
    # not equal to them
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    torch.testing.assert_close(got, want, atol=0.1, rtol=0.05)
    # "none" wins over a caller's bf16 autocast, as `amp: bf16, target_amp: none` asks
    fp32 = IJEPA.from_config(cfg.replace(target_amp="none"))
    fp32.load_state_dict(exact.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fp32.forward_target(b.images, b.masks_pred, 1), want)
    # the context encoder and predictor still train in float32 and get gradients
    loss, _ = bf16(b.images, b.masks_enc, b.masks_pred)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad is not None for _, p in bf16.trainable())


def test_variance_covariance_is_zero_for_whitened_and_high_for_collapsed_embeddings():
    white = torch.randn(4096, 8, generator=torch.Generator().manual_seed(0)) * 1.5
    assert variance_covariance(white) < 0.05
    collapsed = torch.ones(64, 8)
    assert variance_covariance(collapsed) == pytest.approx(1.0 - 1e-2, abs=1e-3)
    correlated = torch.randn(512, 1).expand(512, 8) * 2  # std 2: only the covariance term
    assert variance_covariance(correlated) > 10


def test_sigreg_is_low_only_for_a_standard_normal_batch():
    z = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    gaussian = sigreg(z).item()
    assert gaussian < 3  # B x the Epps-Pulley statistic stays O(1) under the null
    unlike = {
        "collapsed": torch.zeros_like(z),
        "too wide": 3 * z,
        "too narrow": 0.3 * z,
        "shifted": z + 2,
        "rank one": z[:, :1].expand_as(z),
    }
    for name, bad in unlike.items():
        torch.manual_seed(0)
        assert sigreg(bad) > 20 * gaussian, name


@pytest.mark.parametrize(
    ("key", "penalty"), [("vc_weight", variance_covariance), ("sigreg_weight", sigreg)]
)
def test_a_penalty_weight_adds_the_penalty_and_every_parameter_still_learns(key, penalty):
    cfg = tiny_cfg()
    b = batch(cfg)
    plain = IJEPA.from_config(cfg)
    regularised = IJEPA.from_config(cfg.replace(**{key: 0.5}))
    regularised.load_state_dict(plain.state_dict())
    loss_plain, _ = plain(b.images, b.masks_enc, b.masks_pred)
    torch.manual_seed(1)  # SIGReg's random directions: the same in both calls
    loss_reg, _ = regularised(b.images, b.masks_enc, b.masks_pred)
    context = plain.encoder(b.images, b.masks_enc).mean(1)
    torch.manual_seed(1)
    expected = loss_plain + 0.5 * penalty(context)
    torch.testing.assert_close(loss_reg, expected)
    assert loss_reg > loss_plain
    loss_reg.backward()
    for name, p in regularised.trainable():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in regularised.target_encoder.parameters())


def test_objective_options_are_checked():
    with pytest.raises(ConfigError, match="target_last_blocks=5 exceeds depth"):
        tiny_cfg(depth=4, target_last_blocks=5)
    with pytest.raises(ConfigError, match="vc_weight must be >= 0"):
        tiny_cfg(vc_weight=-1.0)
    with pytest.raises(ConfigError, match="sigreg_weight must be >= 0"):
        tiny_cfg(sigreg_weight=-0.1)
    with pytest.raises(ConfigError, match="target_amp"):
        tiny_cfg(target_amp="fp16")


def test_a_step_counts_fewer_flops_than_the_official_style_step_that_computes_every_token():
    # bench/train_step.py's FLOP counts, as bench/recipe.py calls them for equal-compute arms
    cfg = tiny_cfg(depth=2)
    cut = step_flops(cfg, torch.device("cpu"), samples=2)
    every_token = step_flops(cfg, torch.device("cpu"), "baseline", samples=2)
    assert 0.5 * every_token < cut < 0.97 * every_token
