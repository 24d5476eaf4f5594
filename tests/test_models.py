"""Encoder and predictor: shapes, finiteness, gradients, position embeddings, unwrapping."""

import pytest
import torch
from tiny import tiny_config

from jepa.config import MODEL_SIZES, JEPAConfig
from jepa.models import (
    VisionTransformer,
    apply_masks,
    build_encoder,
    build_predictor,
    repeat_interleave_batch,
    sincos_pos_embed_2d,
    unwrap,
    vit,
)


def tiny_cfg(**kw):
    """`debug=tiny` with a 48-wide encoder and a 2-deep predictor."""
    base = dict(embed_dim=48, num_heads=3, pred_embed_dim=24, pred_depth=2, pred_num_heads=3)
    return tiny_config(**{**base, **kw})


def masks(batch, n_patches, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.stack(
            [torch.randperm(n_patches, generator=g)[:k].sort().values for _ in range(batch)]
        )
        for k in sizes
    ]


@pytest.mark.parametrize("name", sorted(MODEL_SIZES))
def test_every_named_size_builds_with_official_widths(name):
    cfg = JEPAConfig(model=name, image_size=32, patch_size=16)
    with torch.device("meta"):  # sizes only: no memory or init time for a billion weights
        enc = build_encoder(cfg)
    dim, depth, heads = MODEL_SIZES[name]
    assert enc.embed_dim == dim and len(enc.blocks) == depth
    assert enc.blocks[0].attn.num_heads == heads


def test_encoder_shapes_and_masking_keep_listed_patches():
    cfg = tiny_cfg()
    enc = build_encoder(cfg).eval()
    x = torch.randn(3, 1, 28, 28)
    full = enc(x)
    assert full.shape == (3, 49, 48) and torch.isfinite(full).all()
    m = masks(3, 49, [10, 10])
    out = enc(x, m)
    assert out.shape == (6, 10, 48)
    # masking happens after position embedding: tokens are those of the kept patches
    tokens = enc.embed(x)
    assert torch.equal(
        apply_masks(tokens, m)[:3], torch.gather(tokens, 1, m[0][..., None].expand(-1, -1, 48))
    )


def test_predictor_output_shape_is_targets_times_contexts():
    cfg = tiny_cfg()
    enc, pred = build_encoder(cfg), build_predictor(cfg)
    x = torch.randn(2, 1, 28, 28)
    m_ctx, m_tgt = masks(2, 49, [20]), masks(2, 49, [6] * 4, seed=1)
    out = pred(enc(x, m_ctx), m_ctx, m_tgt)
    assert out.shape == (4 * 1 * 2, 6, 48) and torch.isfinite(out).all()


def test_every_trainable_parameter_gets_a_gradient():
    cfg = tiny_cfg(drop_path_rate=0.1)
    enc, pred = build_encoder(cfg), build_predictor(cfg)
    x = torch.randn(2, 1, 28, 28)
    m_ctx, m_tgt = masks(2, 49, [20, 20]), masks(2, 49, [6] * 3, seed=1)
    pred(enc(x, m_ctx), m_ctx, m_tgt).square().mean().backward()
    for name, p in [*enc.named_parameters(), *pred.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    a = build_encoder(cfg)
    b = build_encoder(cfg.replace(gradient_checkpointing=True))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 28, 28)
    a(x).sum().backward()
    b(x).sum().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_last_block_computes_only_the_listed_rows(checkpointing):
    torch.manual_seed(0)
    enc = build_encoder(tiny_cfg(depth=3, gradient_checkpointing=checkpointing))
    x = torch.randn(2, 1, 28, 28)
    rows = torch.stack([torch.randperm(49)[:17] for _ in range(2)])
    full = enc(x)
    cut = enc(x, rows=rows)
    assert cut.shape == (2, 17, 48)
    torch.testing.assert_close(cut, apply_masks(full, [rows]))
    # every block's output at those rows, the last one's computed for them alone
    outputs = enc.block_outputs(x, 3), enc.block_outputs(x, 3, rows=rows)
    for h_full, h_cut in zip(*outputs, strict=True):
        torch.testing.assert_close(h_cut, apply_masks(h_full, [rows]))
    # a slice takes the same tokens as the indices of its positions
    torch.testing.assert_close(
        enc(x, rows=slice(30, None)), enc(x, rows=torch.arange(30, 49).expand(2, -1))
    )
    # gradients reach every parameter, and equal those of the full computation
    cut.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters()}
    enc.zero_grad()
    apply_masks(enc(x), [rows]).square().sum().backward()
    for n, p in enc.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, msg=n)


def eager_and_fused(fn):
    """`fn()` without autograd, once with the blocks run eagerly and once fused."""
    with torch.no_grad():
        with vit.eager_inference():
            eager = fn()
        return eager, fn()


def test_fused_inference_is_taken_only_without_autograd_in_float32():
    x = torch.randn(2, 49, 48)
    with torch.no_grad():
        if not vit.fused_inference(x):
            pytest.skip("this torch has no oneDNN fused linear")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not vit.fused_inference(x)
        assert not vit.fused_inference(x.double())
    assert not vit.fused_inference(x)  # autograd on: the eager blocks, which have gradients
    block = vit.Block(48, 3, drop_path=0.1)
    with torch.no_grad():
        assert not block.train().fuses(x)  # stochastic depth drops branches in training
        assert block.eval().fuses(x)


@pytest.mark.parametrize(
    "rows", [None, slice(30, None), torch.stack([torch.randperm(49)[:17] for _ in range(2)])]
)
def test_fused_blocks_compute_what_the_eager_blocks_do(rows, monkeypatch):
    torch.manual_seed(0)
    enc = build_encoder(tiny_cfg(depth=3))
    for p in enc.parameters():  # weights far from the init's small values
        p.data.normal_(0, 0.3)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        if not vit.fused_inference(torch.zeros(1)):
            pytest.skip("this torch has no oneDNN fused linear")
    calls = []
    fused_linear = vit._onednn_linear_add
    monkeypatch.setattr(vit, "_onednn_linear_add", lambda *a: calls.append(1) or fused_linear(*a))
    eager, fused = eager_and_fused(lambda: enc.block_outputs(x, 3, rows=rows))
    assert len(calls) == 2 * 3  # the fused run took the fused path in every block
    assert eager[-1].abs().max() > 1  # large enough activations to tell an error apart
    for h_eager, h_fused in zip(eager, fused, strict=True):
        torch.testing.assert_close(h_fused, h_eager, rtol=1e-5, atol=1e-5)
    eager, fused = eager_and_fused(lambda: enc.forward_features(x, 2))
    torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-5)


def test_position_embedding_follows_the_input_resolution():
    enc = VisionTransformer(
        image_size=32, patch_size=8, in_chans=1, embed_dim=16, depth=1, num_heads=2
    )
    # 64x32 input: a 8x4 grid whose row/column codes equal the table built for that grid
    tokens = enc.embed(torch.zeros(1, 1, 64, 32)) - enc.patch_embed.proj.bias
    torch.testing.assert_close(tokens[0], sincos_pos_embed_2d(16, 8, 4))
    # the first 4x4 block of a larger grid has the same codes as the training grid
    big = sincos_pos_embed_2d(16, 8, 8).view(8, 8, 16)[:4, :4].reshape(16, 16)
    torch.testing.assert_close(big, enc.pos_embed[0])


def test_patch_tokens_are_contiguous_through_the_blocks():
    # A transposed view would be inherited by every residual sum and copied again by each
    # block's layer norms and linears; the values are the same either way.
    enc = build_encoder(tiny_cfg()).eval()
    x = torch.randn(2, 1, 28, 28)
    tokens = enc.embed(x)
    conv = enc.patch_embed(x)
    assert tokens.is_contiguous()
    assert torch.equal(tokens, conv.flatten(2).transpose(1, 2) + enc.pos_embed)
    with torch.no_grad():
        assert all(h.is_contiguous() for h in enc.block_outputs(x, len(enc.blocks)))


def test_sincos_rows_and_columns_are_distinct():
    table = sincos_pos_embed_2d(32, 7)
    assert table.shape == (49, 32)
    assert torch.cdist(table, table).add(torch.eye(49)).min() > 0


def test_repeat_interleave_batch_order():
    x = torch.arange(4).view(4, 1)  # two masks of batch 2: [m0b0, m0b1, m1b0, m1b1]
    out = repeat_interleave_batch(x, 2, 3).flatten().tolist()
    assert out == [0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3]


def test_forward_features_pools_and_concatenates_last_blocks():
    enc = build_encoder(tiny_cfg()).eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(enc.forward_features(x), enc(x).mean(1))
    assert enc.forward_features(x, num_last_blocks=2).shape == (2, 96)


def test_unwrap_reaches_the_plain_module_under_every_wrapper():
    model = torch.nn.Linear(2, 2)
    # torch.compile compiles on the first call only: wrapping costs nothing here.
    wrapped = torch.compile(torch.nn.DataParallel(torch.compile(model)))
    assert unwrap(wrapped) is model
    assert unwrap(model) is model
