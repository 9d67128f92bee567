"""Encoders, predictors and official-weight loading."""
from jepa_world.models.official import checkpoint_filter_fn, load_official_checkpoint
from jepa_world.models.predictor import MaskedPredictor, PredictorConfig
from jepa_world.models.vit import VIT_SIZES, ViTConfig, VisionTransformer, build_encoder

__all__ = ["VIT_SIZES", "ViTConfig", "VisionTransformer", "build_encoder", "MaskedPredictor", "PredictorConfig",
           "checkpoint_filter_fn", "load_official_checkpoint"]
