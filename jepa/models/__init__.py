"""Networks: the ViT encoder and the I-JEPA predictor, and `unwrap` for their wrappers."""

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
    "VisionTransformer",
    "VisionTransformerPredictor",
    "apply_masks",
    "build_encoder",
    "build_predictor",
    "repeat_interleave_batch",
    "sincos_pos_embed_2d",
    "unwrap",
]
