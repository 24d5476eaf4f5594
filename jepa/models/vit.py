"""Vision Transformer encoder and I-JEPA predictor.

Reads top to bottom: position embeddings, mask gathering, the transformer block,
the encoder, the predictor. Parameter names follow the official I-JEPA release
(`patch_embed.proj`, `blocks.N.attn.qkv`, `predictor_blocks.N`, ...), so its
checkpoints load without renaming. Both networks take patch-index masks: an encoder call
`encoder(x, masks)` keeps only the listed patches after adding positions, and a
predictor call `predictor(z, masks_context, masks_target)` predicts the target
patches' embeddings from the context tokens.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

# --------------------------------------------------------------------------- positions


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int | None = None) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, `(grid_h * grid_w, dim)` in raster order.

    The first half of the channels encodes the column, the second half the row (the
    official I-JEPA layout, so released weights see the positions they were trained
    with); `dim` must be divisible by 4.
    """
    grid_w = grid_h if grid_w is None else grid_w
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    return torch.cat(
        [_sincos_1d(dim // 2, cols.flatten()), _sincos_1d(dim // 2, rows.flatten())], 1
    ).float()


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    freqs = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], 1)


def apply_masks(x: torch.Tensor, masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """Gather tokens by patch index.

    x: `(B, N, D)`; masks: list of M index tensors `(B, K)`.
    Returns `(M * B, K, D)`, mask-major (all of mask 0's rows, then mask 1's, ...).
    """
    d = x.size(-1)
    return torch.cat([torch.gather(x, 1, m.unsqueeze(-1).expand(-1, -1, d)) for m in masks], 0)


Rows = slice | torch.Tensor | None
"""Tokens of a `(B, N, D)` tensor: a slice of positions, or `(B, R)` indices per sample."""


def take_rows(x: torch.Tensor, rows: slice | torch.Tensor) -> torch.Tensor:
    """The `rows` of `x (B, N, D)`, `(B, R, D)`: a view for a slice, a gather for indices."""
    if isinstance(rows, slice):
        return x[:, rows]
    return torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def repeat_interleave_batch(x: torch.Tensor, batch_size: int, repeat: int) -> torch.Tensor:
    """`(M * B, ...)` mask-major → `(M * repeat * B, ...)`: each mask's B rows repeated `repeat` times."""
    num_chunks = x.size(0) // batch_size
    return torch.cat(
        [
            x[i * batch_size : (i + 1) * batch_size].repeat(repeat, *([1] * (x.dim() - 1)))
            for i in range(num_chunks)
        ],
        0,
    )


# --------------------------------------------------------------------------- fused inference

FUSED_INFERENCE = True
"""Whether blocks run without autograd on the CPU in float32 take the fused path
(`eager_inference` turns it off for a while)."""


@contextlib.contextmanager
def eager_inference() -> Iterator[None]:
    """Blocks without autograd run eagerly (separate linear, GELU and residual sum), not on
    the fused oneDNN path, for the duration of the block: how the benches time the eager
    path and the tests compare the two."""
    global FUSED_INFERENCE
    saved, FUSED_INFERENCE = FUSED_INFERENCE, False
    try:
        yield
    finally:
        FUSED_INFERENCE = saved


@functools.cache
def _has_onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fused_inference(x: torch.Tensor) -> bool:
    """Whether a block given `x` runs on oneDNN's fused linears: no autograd, a float32
    CPU tensor, no autocast, and a torch built with oneDNN.

    The same math to float32 rounding. The target encoder's forward pass in training, the
    online kNN monitor and feature extraction all run this way: the GELU is applied, and
    the residual added, while each linear's output is still in cache, and the bias copy
    of `addmm` goes. `bench/eval_cost.py` and `bench/train_step.py` time it against eager.
    """
    return (
        FUSED_INFERENCE
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and _has_onednn_linear()
    )


def _onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str = "none"
) -> torch.Tensor:
    """`act(F.linear(x, weight, bias))` in one oneDNN call; `act` is "none" or "gelu" (erf)."""
    return torch.ops.mkldnn._linear_pointwise(
        x, weight, bias, act, [], "none" if act == "gelu" else ""
    )


def _onednn_linear_add(x: torch.Tensor, linear: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """`residual + linear(x)` in one oneDNN call."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual, linear.weight, linear.bias, "add")


# --------------------------------------------------------------------------- blocks


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.size(0),) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Attention(nn.Module):
    """Multi-head self-attention through `F.scaled_dot_product_attention`."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rows: Rows = None) -> torch.Tensor:
        """x: `(B, N, D)` → `(B, N, D)`, or `(B, R, D)` for the `rows` of `take_rows`.

        With `rows`, only those tokens query; every token is still a key and a value. The
        queries are projected by the first third of `qkv`, so the weights are the same.
        """
        return self.proj(self.attend(x, rows))

    def attend(self, x: torch.Tensor, rows: Rows = None, linear=F.linear) -> torch.Tensor:
        """The heads' outputs before the output projection, `(B, N or R, D)`; `linear`
        computes the query, key and value projections."""
        b, n, d = x.shape
        heads = self.num_heads
        weight, bias = self.qkv.weight, self.qkv.bias
        if rows is None:
            qkv = linear(x, weight, bias)
            q, k, v = qkv.view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        else:
            k, v = (
                linear(x, weight[d:], None if bias is None else bias[d:])
                .view(b, n, 2, heads, d // heads)
                .permute(2, 0, 3, 1, 4)
            )
            x = take_rows(x, rows)
            q = linear(x, weight[:d], None if bias is None else bias[:d])
            q = q.view(b, x.size(1), heads, d // heads).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)
        return x.transpose(1, 2).reshape(b, -1, d)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm attribute names)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor, rows: Rows = None) -> torch.Tensor:
        """`(B, N, D)` → `(B, N, D)`; with `rows`, only those tokens' outputs `(B, R, D)`."""
        if self.fuses(x):
            return self._forward_fused(x, rows)
        h = self.attn(self.norm1(x), rows)
        if rows is not None:
            x = take_rows(x, rows)
        x = x + self.drop_path1(h)
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def fuses(self, x: torch.Tensor) -> bool:
        """Whether this call takes the fused no-grad path (see `fused_inference`)."""
        dropping = self.training and (self.drop_path1.p > 0 or self.drop_path2.p > 0)
        return not dropping and fused_inference(x)

    def _forward_fused(self, x: torch.Tensor, rows: Rows) -> torch.Tensor:
        """The same block with oneDNN's fused linears: the GELU inside the first MLP
        linear, each residual sum inside the linear before it."""
        h = self.attn.attend(self.norm1(x), rows, linear=_onednn_linear)
        if rows is not None:
            x = take_rows(x, rows).contiguous()
        x = _onednn_linear_add(h, self.attn.proj, x)
        h = _onednn_linear(self.norm2(x), self.mlp.fc1.weight, self.mlp.fc1.bias, "gelu")
        return _onednn_linear_add(h, self.mlp.fc2, x)


def patch_tokens(x: torch.Tensor) -> torch.Tensor:
    """Convolution output `(B, D, H, W)` → tokens `(B, H*W, D)`, contiguous.

    The copy matters: a transposed view would be inherited by the position add and every
    residual sum after it, so each block's layer norms and linears would copy it again.
    The values are the same either way; bench/input_path.py times both layouts.
    """
    return x.flatten(2).transpose(1, 2).contiguous()


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens by one strided convolution."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W)` → `(B, D, H/P, W/P)`."""
        return self.proj(x)


def run_blocks(
    blocks: nn.ModuleList,
    x: torch.Tensor,
    *,
    gradient_checkpointing: bool = False,
    keep: int = 0,
    rows: Rows = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run `blocks` in order; also return the outputs of the last `keep` blocks.

    With `rows`, the last block computes only those tokens' outputs (the earlier blocks
    need every token: each is a key and a value of the next), and every returned tensor is
    cut to them, `(B, R, D)`. The values are the same as cutting the full outputs.
    With `gradient_checkpointing`, activations are recomputed in backward to save memory.
    """
    kept = []
    recompute = gradient_checkpointing and torch.is_grad_enabled()
    last = len(blocks) - 1
    for i, blk in enumerate(blocks):
        r = rows if i == last else None
        x = checkpoint(blk, x, r, use_reentrant=False) if recompute else blk(x, r)
        if i >= len(blocks) - keep:
            kept.append(x)
    if rows is not None:
        kept[:-1] = [take_rows(h, rows) for h in kept[:-1]]
    return x, kept


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _rescale_blocks(blocks: nn.ModuleList) -> None:
    # Shrink residual-branch outputs with depth so deep stacks start near identity.
    for layer_id, blk in enumerate(blocks, start=1):
        blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer_id))
        blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer_id))


# --------------------------------------------------------------------------- encoder


class VisionTransformer(nn.Module):
    """ViT encoder without a class token, with fixed sin-cos positions.

    The constructor's keyword arguments are its whole description: `model_args()`
    returns them, and checkpoints store them so the model can be rebuilt alone.
    """

    def __init__(
        self,
        *,
        image_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self._args = dict(
            image_size=image_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.grid_size = image_size // patch_size
        self.gradient_checkpointing = gradient_checkpointing
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.register_buffer(
            "pos_embed", sincos_pos_embed_2d(embed_dim, self.grid_size)[None], persistent=False
        )
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i]) for i in range(depth)]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.apply(_init_weights)
        _rescale_blocks(self.blocks)

    def model_args(self) -> dict:
        """Constructor arguments that rebuild this module."""
        return dict(self._args)

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Positions for a `grid_h × grid_w` input, `(1, grid_h*grid_w, D)`.

        The embedding is an analytic function of the grid, so another resolution gets
        its own exact sin-cos table rather than an interpolated one; this keeps the
        raster order right for non-square and larger inputs.
        """
        if (grid_h, grid_w) == (self.grid_size, self.grid_size):
            return self.pos_embed
        table = sincos_pos_embed_2d(self.embed_dim, grid_h, grid_w)
        return table.to(self.pos_embed.device)[None]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images `(B, C, H, W)` → patch tokens with positions `(B, N, D)`."""
        if x.size(-1) % self.patch_size or x.size(-2) % self.patch_size:
            raise ValueError(
                f"input {tuple(x.shape[-2:])} is not a multiple of patch_size={self.patch_size}"
            )
        x = self.patch_embed(x)
        grid_h, grid_w = x.shape[-2:]
        x = patch_tokens(x)
        return x + self.position_embedding(grid_h, grid_w).to(x.dtype)

    def forward(
        self,
        x: torch.Tensor,
        masks: Sequence[torch.Tensor] | torch.Tensor | None = None,
        *,
        rows: Rows = None,
    ) -> torch.Tensor:
        """Images `(B, C, H, W)` → normalised tokens.

        Without masks: `(B, N, D)`. With M masks of `(B, K)` patch indices: `(M*B, K, D)`,
        the tokens of those patches alone. With `rows` (see `run_blocks`): `(B, R, D)`, the
        outputs of the whole image's tokens at those rows.
        """
        x = self.embed(x)
        if masks is not None:
            x = apply_masks(x, [masks] if torch.is_tensor(masks) else masks)
        x, _ = run_blocks(
            self.blocks, x, gradient_checkpointing=self.gradient_checkpointing, rows=rows
        )
        return self.norm(x)

    def block_outputs(
        self, x: torch.Tensor, num_last_blocks: int, *, rows: Rows = None
    ) -> list[torch.Tensor]:
        """Images `(B, C, H, W)` → the last `num_last_blocks` blocks' outputs, each
        `(B, N, D)` (or `(B, R, D)` with `rows`), before any normalisation."""
        x = self.embed(x)
        _, kept = run_blocks(self.blocks, x, keep=num_last_blocks, rows=rows)
        return kept

    def forward_features(self, x: torch.Tensor, num_last_blocks: int = 1) -> torch.Tensor:
        """Average-pooled features for evaluation.

        Returns `(B, D)` pooled final tokens, or `(B, num_last_blocks*D)`: the concatenation
        of the last blocks' normalised, pooled outputs.
        """
        kept = self.block_outputs(x, num_last_blocks)
        return torch.cat([self.norm(h).mean(1) for h in kept], -1)


# --------------------------------------------------------------------------- predictor


class VisionTransformerPredictor(nn.Module):
    """Narrow transformer that predicts target-patch embeddings from context tokens."""

    def __init__(
        self,
        *,
        grid_size: int,
        embed_dim: int = 768,
        pred_embed_dim: int = 384,
        depth: int = 6,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        self._args = dict(
            grid_size=grid_size,
            embed_dim=embed_dim,
            pred_embed_dim=pred_embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.gradient_checkpointing = gradient_checkpointing
        self.predictor_embed = nn.Linear(embed_dim, pred_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_embed_dim))
        self.register_buffer(
            "predictor_pos_embed",
            sincos_pos_embed_2d(pred_embed_dim, grid_size)[None],
            persistent=False,
        )
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.predictor_blocks = nn.ModuleList(
            [Block(pred_embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i]) for i in range(depth)]
        )
        self.predictor_norm = nn.LayerNorm(pred_embed_dim, eps=1e-6)
        self.predictor_proj = nn.Linear(pred_embed_dim, embed_dim)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        _rescale_blocks(self.predictor_blocks)

    def model_args(self) -> dict:
        return dict(self._args)

    def forward(
        self,
        z: torch.Tensor,
        masks_context: Sequence[torch.Tensor],
        masks_target: Sequence[torch.Tensor],
    ) -> torch.Tensor:
        """Predict target embeddings.

        z: context tokens `(M_ctx*B, K_ctx, D)` from `encoder(x, masks_context)`;
        masks_context: M_ctx tensors `(B, K_ctx)`; masks_target: M_tgt tensors `(B, K_tgt)`.
        Returns `(M_tgt*M_ctx*B, K_tgt, D)`: every context copy predicts every target block.
        """
        batch_size = z.size(0) // len(masks_context)
        num_targets = len(masks_target)
        x = self.predictor_embed(z)
        pos = self.predictor_pos_embed.expand(batch_size, -1, -1).to(x.dtype)
        x = x + apply_masks(pos, masks_context)
        num_context_tokens = x.size(1)

        # One mask token per target position, carrying that position's embedding.
        target_pos = apply_masks(pos, masks_target)
        target_pos = repeat_interleave_batch(target_pos, batch_size, len(masks_context))
        queries = self.mask_token.to(x.dtype) + target_pos

        x = x.repeat(num_targets, 1, 1)  # context repeated once per target block
        x = torch.cat([x, queries], 1)
        # Only the mask tokens' outputs are predictions: the last block computes no others.
        x, _ = run_blocks(
            self.predictor_blocks,
            x,
            gradient_checkpointing=self.gradient_checkpointing,
            rows=slice(num_context_tokens, None),
        )
        return self.predictor_proj(self.predictor_norm(x))


def build_encoder(cfg) -> VisionTransformer:
    """Encoder from a `JEPAConfig`."""
    return VisionTransformer(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        drop_path_rate=cfg.drop_path_rate,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )


def build_predictor(cfg) -> VisionTransformerPredictor:
    """Predictor from a `JEPAConfig`."""
    return VisionTransformerPredictor(
        grid_size=cfg.grid_size,
        embed_dim=cfg.embed_dim,
        pred_embed_dim=cfg.pred_embed_dim,
        depth=cfg.pred_depth,
        num_heads=cfg.pred_num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        drop_path_rate=cfg.drop_path_rate,
        gradient_checkpointing=cfg.gradient_checkpointing,
    )
