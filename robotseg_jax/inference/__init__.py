"""Inference: sam2's predictor APIs on the JAX model."""

from robotseg_jax.inference.robotseg_predictor import RobotSegVideoPredictor
from robotseg_jax.inference.video_predictor import VideoPredictor, build_video_predictor

__all__ = ["RobotSegVideoPredictor", "VideoPredictor", "build_video_predictor"]

from robotseg_jax.inference.image_predictor import ImagePredictor, build_image_predictor

__all__ += ["ImagePredictor", "build_image_predictor"]
