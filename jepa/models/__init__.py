"""Networks: the ViT encoder and the I-JEPA predictor, and the I-JEPA module that owns them."""

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

__all__ = [
    "IJEPA",
    "VisionTransformer",
    "VisionTransformerPredictor",
    "apply_masks",
    "build_encoder",
    "build_predictor",
    "repeat_interleave_batch",
    "sincos_pos_embed_2d",
]
