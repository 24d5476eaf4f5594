"""The I-JEPA learning algorithm as one module.

`IJEPA` owns the three networks and everything that ties them together: the context
encoder and the predictor (trained), the target encoder (an EMA of the context encoder,
never given gradients), the regression loss, the EMA update, the AdamW parameter groups,
and the DDP / `torch.compile` wrapping of the networks. The training loop in
`jepa.train` only drives it:

    loss, predictions = model(images, masks_context, masks_target)
    loss.backward(); optimizer.step()
    model.update_target(momentum)

Per batch (Assran et al. 2023, Sec. 3): the target encoder embeds the whole image and
the target blocks' tokens are gathered from its layer-normed output; the context
encoder embeds only the context block's patches; the predictor, given the context
tokens and mask tokens at the target positions, regresses the target tokens.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from jepa.config import TARGET_AMP_MODES
from jepa.device import autocast
from jepa.ema import ema_update
from jepa.models.vit import (
    VisionTransformer,
    VisionTransformerPredictor,
    apply_masks,
    build_encoder,
    build_predictor,
    repeat_interleave_batch,
)

LOSSES = {"smooth_l1": F.smooth_l1_loss, "l2": F.mse_loss}


@dataclass
class _Runners:
    """The callables a training step runs: the networks, possibly DDP/compile-wrapped.

    Kept apart from the module's own attributes so that wrappers never enter
    `state_dict()` and the plain networks stay one attribute away.
    """

    encoder: nn.Module
    predictor: nn.Module
    target_encoder: nn.Module
    ddp: tuple[DistributedDataParallel, ...] = ()


def variance_covariance(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance and covariance terms of embeddings `z (B, D)`, a 0-d tensor.

    Variance: the mean hinge `max(0, 1 - std)` of each dimension over the batch, which keeps
    every dimension in use; covariance: the squared off-diagonal entries of the covariance
    matrix over `D`, which decorrelates the dimensions (Bardes et al. 2022).
    """
    z = z.float()
    z = z - z.mean(0)
    std = torch.sqrt(z.var(0) + eps)
    cov = (z.T @ z) / max(z.size(0) - 1, 1)
    off_diagonal = cov.square().sum() - cov.diagonal().square().sum()
    return F.relu(1.0 - std).mean() + off_diagonal / z.size(1)


SIGREG_SLICES = 256  # random directions per call
SIGREG_KNOTS = 17  # quadrature points of the Epps-Pulley integral over t in [0, 5]


def sigreg(z: torch.Tensor) -> torch.Tensor:
    """LeJEPA's SIGReg of embeddings `z (B, D)`, a 0-d tensor (Balestriero & LeCun 2025).

    `z` is projected on `SIGREG_SLICES` random unit directions, fresh on every call (drawn
    from torch's global generator, which checkpoints save); each 1-D projection is compared
    to a standard normal by the Epps-Pulley statistic: the squared distance between its
    empirical characteristic function and `exp(-t^2/2)`, weighted by `exp(-t^2/2)`,
    integrated over `t` and scaled by `B`. Its mean over the directions is 0 only when every
    projection looks standard normal, which pushes the batch towards an isotropic Gaussian
    and away from collapse.
    """
    z = z.float()
    directions = torch.randn(z.size(1), SIGREG_SLICES, device=z.device)
    x = z @ (directions / directions.norm(dim=0))
    t = torch.linspace(0.0, 5.0, SIGREG_KNOTS, device=z.device)
    gauss = torch.exp(-0.5 * t.square())
    xt = x.unsqueeze(-1) * t  # (B, slices, knots)
    distance = (xt.cos().mean(0) - gauss).square() + xt.sin().mean(0).square()
    # The integrand is even in t: its integral over [-5, 5] is twice that over [0, 5].
    return 2 * torch.trapezoid(distance * gauss, t, dim=-1).mean() * z.size(0)


class IJEPA(nn.Module):
    """Context encoder, predictor and EMA target encoder, with the I-JEPA objective."""

    def __init__(
        self,
        encoder: VisionTransformer,
        predictor: VisionTransformerPredictor,
        loss: str,
        *,
        target_last_blocks: int = 1,
        vc_weight: float = 0.0,
        sigreg_weight: float = 0.0,
        target_amp: str = "same",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r} is not one of {', '.join(map(repr, LOSSES))}")
        if not 1 <= target_last_blocks <= len(encoder.blocks):
            raise ValueError(
                f"target_last_blocks={target_last_blocks} is not in 1..{len(encoder.blocks)}"
            )
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.loss_name = loss
        self.target_last_blocks = target_last_blocks
        self.vc_weight = vc_weight
        self.sigreg_weight = sigreg_weight
        if target_amp not in TARGET_AMP_MODES:
            raise ValueError(
                f"target_amp={target_amp!r} is not one of {', '.join(map(repr, TARGET_AMP_MODES))}"
            )
        self.target_amp = target_amp
        self.runners = _Runners(encoder, predictor, self.target_encoder)

    @classmethod
    def from_config(cls, cfg) -> IJEPA:
        """The networks a `JEPAConfig` describes, initialised from `cfg.seed` (the same
        weights on every rank)."""
        torch.manual_seed(cfg.seed)
        return cls(
            build_encoder(cfg),
            build_predictor(cfg),
            cfg.loss,
            target_last_blocks=cfg.target_last_blocks,
            vc_weight=cfg.vc_weight,
            sigreg_weight=cfg.sigreg_weight,
            target_amp=cfg.target_amp,
        )

    # ---- the objective ----------------------------------------------------------------------

    @torch.no_grad()
    def forward_target(
        self, images: torch.Tensor, masks_target: Sequence[torch.Tensor], num_context: int
    ) -> torch.Tensor:
        """Regression targets `(M_tgt*M_ctx*B, K_tgt, D)`: the target encoder's layer-normed
        tokens at each target block, repeated once per context block. With
        `target_last_blocks > 1`, the mean of the last blocks' layer-normed outputs.

        The last block computes only the target blocks' tokens (all of them side by side,
        `(B, sum K_tgt, D)`), when they are fewer than the image's: no other token of it is
        a target, and the earlier blocks' tokens are all keys and values of the next.

        With `target_amp` other than "same", the pass runs under that precision
        (`jepa.device.autocast`) whatever the caller's autocast; the targets come out float32.
        """
        if self.target_amp == "same":
            return self._targets(images, masks_target, num_context)
        with autocast(self.target_amp, images.device):
            return self._targets(images, masks_target, num_context).float()

    def _targets(
        self, images: torch.Tensor, masks_target: Sequence[torch.Tensor], num_context: int
    ) -> torch.Tensor:
        rows = torch.cat(list(masks_target), 1)
        patch = self.target_encoder.patch_size
        if rows.size(1) >= (images.size(-2) // patch) * (images.size(-1) // patch):
            rows = None  # the targets cover as many tokens as the image: gather after
        if self.target_last_blocks == 1:
            h = self.runners.target_encoder(images, rows=rows)
            h = F.layer_norm(h, (h.size(-1),))
        else:
            kept = self.target_encoder.block_outputs(images, self.target_last_blocks, rows=rows)
            h = torch.stack([F.layer_norm(x, (x.size(-1),)) for x in kept]).mean(0)
        if rows is None:
            h = apply_masks(h, masks_target)
        else:  # (B, sum K, D) → mask-major (M*B, K, D), as apply_masks orders it
            h = torch.cat(h.split([m.size(1) for m in masks_target], 1), 0)
        return repeat_interleave_batch(h, images.size(0), num_context)

    def forward_context(
        self,
        images: torch.Tensor,
        masks_context: Sequence[torch.Tensor],
        masks_target: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions `(M_tgt*M_ctx*B, K_tgt, D)` of the target tokens from the context,
        and the context encoder's tokens `(M_ctx*B, K_ctx, D)`."""
        z = self.runners.encoder(images, masks_context)
        return self.runners.predictor(z, masks_context, masks_target), z

    def forward(
        self,
        images: torch.Tensor,
        masks_context: Sequence[torch.Tensor],
        masks_target: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The I-JEPA loss on one batch and the (detached) predictions.

        images `(B, C, H, W)`; masks: lists of `(B, K)` patch-index tensors.
        """
        targets = self.forward_target(images, masks_target, len(masks_context))
        predictions, context = self.forward_context(images, masks_context, masks_target)
        loss = LOSSES[self.loss_name](predictions, targets.to(predictions.dtype))
        if self.vc_weight:
            loss = loss + self.vc_weight * variance_covariance(context.mean(1))
        if self.sigreg_weight:
            loss = loss + self.sigreg_weight * sigreg(context.mean(1))
        return loss, predictions.detach()

    @torch.no_grad()
    def target_features(self, images: torch.Tensor) -> torch.Tensor:
        """The target encoder's layer-normed tokens `(B, N, D)` (for diagnostics)."""
        h = self.runners.target_encoder(images)
        return F.layer_norm(h.float(), (h.size(-1),))

    # ---- learning ---------------------------------------------------------------------------

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """`target ← momentum · target + (1 − momentum) · context encoder`."""
        ema_update(self.target_encoder, self.encoder, momentum)

    def trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        """`(name, parameter)` of the context encoder and the predictor."""
        for prefix, module in (("encoder", self.encoder), ("predictor", self.predictor)):
            for name, p in module.named_parameters(prefix=prefix):
                if p.requires_grad:
                    yield name, p

    def param_groups(self) -> list[dict]:
        """Two AdamW groups: weight decay on matrices, none on biases and 1-D parameters."""
        decay, no_decay = [], []
        for name, p in self.trainable():
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        return [
            {"params": decay, "apply_wd": True},
            {"params": no_decay, "apply_wd": False, "weight_decay": 0.0},
        ]

    # ---- placement ----------------------------------------------------------------------------

    def wrap(self, *, distributed: bool, compile: bool) -> IJEPA:  # noqa: A002
        """Wrap the trained networks in DDP (across the process group) and compile all
        three when asked. The plain networks stay `self.encoder` etc.; returns self."""
        encoder, predictor, target = self.encoder, self.predictor, self.target_encoder
        ddp: tuple[DistributedDataParallel, ...] = ()
        if distributed:
            device = next(self.encoder.parameters()).device
            ids = [device.index] if device.type == "cuda" else None
            encoder = DistributedDataParallel(encoder, device_ids=ids, static_graph=True)
            predictor = DistributedDataParallel(predictor, device_ids=ids, static_graph=True)
            ddp = (encoder, predictor)
        if compile:
            encoder, predictor, target = (torch.compile(m) for m in (encoder, predictor, target))
        self.runners = _Runners(encoder, predictor, target, ddp)
        return self

    def no_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        """Skip DDP's gradient all-reduce (all but the last micro-batch of an accumulation)."""
        stack = contextlib.ExitStack()
        if enabled:
            for module in self.runners.ddp:
                stack.enter_context(module.no_sync())
        return stack

    def networks(self) -> dict[str, nn.Module]:
        """The three plain networks by checkpoint name."""
        return {
            "encoder": self.encoder,
            "predictor": self.predictor,
            "target_encoder": self.target_encoder,
        }
