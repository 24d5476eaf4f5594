"""Networks: the ViT encoder and the I-JEPA predictor, the I-JEPA module that owns them,
and `unwrap` for their wrappers."""

from jepa.models.ijepa import IJEPA
from jepa.models.vit import (
    VisionTransformer,
    VisionTransformerPredictor,
    apply_masks,
    build_encoder,
    build_predictor,
    repeat_interleave_batch,
    sincos_pos_embed_2d,
)
from jepa.models.wrap import unwrap

__all__ = [
    "IJEPA",
    "VisionTransformer",
    "VisionTransformerPredictor",
    "apply_masks",
    "build_encoder",
    "build_predictor",
    "repeat_interleave_batch",
    "sincos_pos_embed_2d",
    "unwrap",
]
