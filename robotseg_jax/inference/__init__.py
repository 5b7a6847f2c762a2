"""Inference: sam2's predictor APIs on the JAX model."""

from robotseg_jax.inference.build import build_image_predictor, build_video_predictor
from robotseg_jax.inference.image_predictor import ImagePredictor
from robotseg_jax.inference.robotseg_predictor import RobotSegVideoPredictor
from robotseg_jax.inference.video_predictor import SessionFrame, VideoPredictor

__all__ = [
    "ImagePredictor",
    "RobotSegVideoPredictor",
    "SessionFrame",
    "VideoPredictor",
    "build_image_predictor",
    "build_video_predictor",
]
