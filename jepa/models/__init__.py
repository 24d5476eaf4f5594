"""Networks: the ViT encoder and the I-JEPA predictor."""

from jepa.models.vit import (
    VisionTransformer,
    VisionTransformerPredictor,
    apply_masks,
    build_encoder,
    build_predictor,
    repeat_interleave_batch,
    sincos_pos_embed_2d,
)

__all__ = [
    "VisionTransformer",
    "VisionTransformerPredictor",
    "apply_masks",
    "build_encoder",
    "build_predictor",
    "repeat_interleave_batch",
    "sincos_pos_embed_2d",
]
