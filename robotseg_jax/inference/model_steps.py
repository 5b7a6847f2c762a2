"""The compiled model calls the video predictor makes, one jitted function per kind of call.

Shapes decide what compiles: a tracked frame with O objects and a memory capacity compiles once and serves
every later frame (the memory bank is a fixed-capacity `MemoryInputs`). Prompted frames compile per click count
and branch (initial conditioning frame or correction, with or without the previous logits), as sam2's
behaviour depends on them. Objects are the vmapped axis of the tracking step: each object brings its own
memory selection (its own conditioning frames), while the frame's image features are shared, unbatched.
A RobotSeg model's steps also take `RobotInputs`: the frame's model input (SEMA's edge map), each object's
category and an RPG key; categories are data, so "no category" (-1) runs in the same programs.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.common import resize_bilinear_nchw
from robotseg_jax.modeling.config import RobotSegConfig, SAM2Config
from robotseg_jax.modeling.memory_bank import MemoryInputs
from robotseg_jax.modeling.robotseg import build_model
from robotseg_jax.modeling.rpg import foreground_on_memory_grid
from robotseg_jax.modeling.sam2 import BackboneFeatures, Prompts, SAM2Model


@flax.struct.dataclass
class StepOutputs:
    """What the predictor keeps of `TrackOutputs`, batch first: pred_masks [B,1,h,w] low-res logits,
    obj_ptr [B,C], object_score_logits [B,1], maskmem_features [B,h',w',mem_dim] float32 or None."""

    pred_masks: jax.Array
    obj_ptr: jax.Array
    object_score_logits: jax.Array
    maskmem_features: jax.Array | None


@flax.struct.dataclass
class RobotInputs:
    """RobotSeg's extra inputs of a step: image [1,H,W,3] the frame's model input, category [B] int32 (-1: none)
    and rng, a PRNG key for RPG. For `track_objects`, category and rng carry a leading object axis ([O, 1] and
    [O]), as the memory does; the image is shared like the features."""

    image: jax.Array
    category: jax.Array
    rng: jax.Array


class ModelSteps:
    """Jitted `SAM2Model` / `RobotSegModel` calls bound to one set of params."""

    def __init__(self, config: SAM2Config, params: dict):
        self.config = config
        self.is_robotseg = isinstance(config, RobotSegConfig)
        self._variables = {"params": params}
        self._model = build_model(config)
        self._encode = jax.jit(self._encode_impl)
        self._track = jax.jit(self._track_impl)
        self._prompt = jax.jit(self._prompt_impl, static_argnames=("is_init_cond_frame",))
        self._memory = jax.jit(self._memory_impl)
        self._foreground = jax.jit(self._foreground_impl)

    def set_params(self, params: dict) -> None:
        """New weights of the same shapes (training's periodic validation): the compiled steps are reused."""
        self._variables = {"params": params}

    # Public calls take and return device arrays; the predictor moves results to the host.
    def encode_frame(self, image: jax.Array) -> BackboneFeatures:
        """Backbone features of one normalised frame `[H, W, 3]` (batch 1)."""
        return self._encode(self._variables, image[None])

    def track_objects(
        self, features: BackboneFeatures, memory: MemoryInputs, robot: RobotInputs | None = None
    ) -> StepOutputs:
        """Tracks O objects on a frame without prompts; `memory` leaves carry a leading object axis (each object
        batch 1 inside). Runs the memory encoder. Outputs are `[O, ...]`. `robot` is given for RobotSeg only."""
        self._check_robot_inputs(robot)
        return self._track(self._variables, features, memory, robot)

    def prompt_frame(
        self,
        features: BackboneFeatures,
        memory: MemoryInputs | None,
        prompts: Prompts,
        prev_sam_mask_logits: jax.Array | None,
        is_init_cond_frame: bool,
        robot: RobotInputs | None = None,
    ) -> StepOutputs:
        """One object's prompted frame (clicks, a mask, or for RobotSeg a category alone), without the memory
        encoder (the predictor encodes memory in the propagation preflight, as sam2 does)."""
        self._check_robot_inputs(robot)
        return self._prompt(
            self._variables, features, memory, prompts, prev_sam_mask_logits, robot,
            is_init_cond_frame=is_init_cond_frame,
        )

    def encode_memory(
        self, features: BackboneFeatures, pred_masks: jax.Array, object_score_logits: jax.Array
    ) -> jax.Array:
        """sam2's `_run_memory_encoder` on a prompted frame: the low-res logits `[B,1,h,w]` upsampled to the model
        size and encoded as a mask from clicks (binarised when configured)."""
        return self._memory(self._variables, features, pred_masks, object_score_logits)

    def memory_foreground(self, pred_masks: jax.Array) -> jax.Array:
        """RPG's foreground of a stored frame (spec §1.4): its low-res logits `[B,1,4h,4w]` (after hole filling)
        -> `[B,h,w]` bool on the memory grid."""
        return self._foreground(pred_masks)

    # ------------------------------------------------------------------ jitted bodies
    def _check_robot_inputs(self, robot: RobotInputs | None) -> None:
        if (robot is not None) != self.is_robotseg:
            raise ValueError(f"RobotInputs go with a RobotSeg model, and only with one ({self.config.name})")

    def _encode_impl(self, variables, images):
        return self._model.apply(variables, images, method=SAM2Model.forward_image)

    def _track_step(self, variables, features, memory, prompts, robot, **kwargs) -> StepOutputs:
        """`track_step` of the model (SAM2Model's or RobotSegModel's), reduced to what the predictor keeps."""
        if robot is not None:
            kwargs.update(raw_image=robot.image, robot_category=robot.category, rng=robot.rng)
        out = self._model.apply(variables, features, memory, prompts, method="track_step", **kwargs)
        return StepOutputs(out.pred_masks, out.obj_ptr, out.object_score_logits, out.maskmem_features)

    def _track_impl(self, variables, features, memory, robot):
        one_object = lambda object_memory, object_robot: self._track_step(
            variables, features, object_memory, Prompts(), object_robot
        )
        robot_axes = None if robot is None else RobotInputs(image=None, category=0, rng=0)
        per_object = jax.vmap(one_object, in_axes=(0, robot_axes))(memory, robot)  # leaves [O, 1, ...]
        return jax.tree.map(lambda x: x[:, 0], per_object)

    def _prompt_impl(self, variables, features, memory, prompts, prev_sam_mask_logits, robot, is_init_cond_frame):
        return self._track_step(
            variables,
            features,
            memory,
            prompts,
            robot,
            prev_sam_mask_logits=prev_sam_mask_logits,
            is_init_cond_frame=is_init_cond_frame,
            run_mem_encoder=False,
        )

    def _memory_impl(self, variables, features, pred_masks, object_score_logits):
        size = (self.config.image_size, self.config.image_size)
        high_res = resize_bilinear_nchw(pred_masks.astype(jnp.float32), size)
        return self._model.apply(
            variables, features, high_res, object_score_logits, True, method=SAM2Model.encode_new_memory
        )

    def _foreground_impl(self, pred_masks):
        emb = self.config.image_embedding_size
        return foreground_on_memory_grid(pred_masks[:, 0], (emb, emb))

    def cache_sizes(self) -> dict[str, int]:
        """How many programs each call has compiled (for tests and benchmarks)."""
        return {
            "encode_frame": self._encode._cache_size(),
            "track_objects": self._track._cache_size(),
            "prompt_frame": self._prompt._cache_size(),
            "encode_memory": self._memory._cache_size(),
            "memory_foreground": self._foreground._cache_size(),
        }
