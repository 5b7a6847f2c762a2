"""The compiled model calls the video predictor makes, one jitted function per kind of call.

Shapes decide what compiles: a tracked frame with O objects and a memory capacity compiles once and serves
every later frame (the memory bank is a fixed-capacity `MemoryInputs`). Prompted frames compile per click count
and branch (initial conditioning frame or correction, with or without the previous logits), as sam2's
behaviour depends on them. Objects are the vmapped axis of the tracking step: each object brings its own
memory selection (its own conditioning frames), while the frame's image features are shared, unbatched.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.common import resize_bilinear_nchw
from robotseg_jax.modeling.config import SAM2Config
from robotseg_jax.modeling.memory_bank import MemoryInputs
from robotseg_jax.modeling.sam2 import BackboneFeatures, Prompts, SAM2Model


@flax.struct.dataclass
class StepOutputs:
    """What the predictor keeps of `TrackOutputs`, batch first: pred_masks [B,1,h,w] low-res logits,
    obj_ptr [B,C], object_score_logits [B,1], maskmem_features [B,h',w',mem_dim] float32 or None."""

    pred_masks: jax.Array
    obj_ptr: jax.Array
    object_score_logits: jax.Array
    maskmem_features: jax.Array | None


class ModelSteps:
    """Jitted `SAM2Model` calls bound to one set of params."""

    def __init__(self, config: SAM2Config, params: dict):
        self.config = config
        self._variables = {"params": params}
        self._model = SAM2Model(config)
        self._encode = jax.jit(self._encode_impl)
        self._track = jax.jit(self._track_impl)
        self._prompt = jax.jit(self._prompt_impl, static_argnames=("is_init_cond_frame",))
        self._memory = jax.jit(self._memory_impl)

    # Public calls take and return device arrays; the predictor moves results to the host.
    def encode_frame(self, image: jax.Array) -> BackboneFeatures:
        """Backbone features of one normalised frame `[H, W, 3]` (batch 1)."""
        return self._encode(self._variables, image[None])

    def track_objects(self, features: BackboneFeatures, memory: MemoryInputs) -> StepOutputs:
        """Tracks O objects on a frame without prompts; `memory` leaves carry a leading object axis (each object
        batch 1 inside). Runs the memory encoder. Outputs are `[O, ...]`."""
        return self._track(self._variables, features, memory)

    def prompt_frame(
        self,
        features: BackboneFeatures,
        memory: MemoryInputs | None,
        prompts: Prompts,
        prev_sam_mask_logits: jax.Array | None,
        is_init_cond_frame: bool,
    ) -> StepOutputs:
        """One object's prompted frame (clicks or a mask), without the memory encoder (the predictor encodes
        memory in the propagation preflight, as sam2 does)."""
        return self._prompt(
            self._variables, features, memory, prompts, prev_sam_mask_logits, is_init_cond_frame=is_init_cond_frame
        )

    def encode_memory(
        self, features: BackboneFeatures, pred_masks: jax.Array, object_score_logits: jax.Array
    ) -> jax.Array:
        """sam2's `_run_memory_encoder` on a prompted frame: the low-res logits `[B,1,h,w]` upsampled to the model
        size and encoded as a mask from clicks (binarised when configured)."""
        return self._memory(self._variables, features, pred_masks, object_score_logits)

    # ------------------------------------------------------------------ jitted bodies
    def _encode_impl(self, variables, images):
        return self._model.apply(variables, images, method=SAM2Model.forward_image)

    def _outputs(self, out) -> StepOutputs:
        return StepOutputs(out.pred_masks, out.obj_ptr, out.object_score_logits, out.maskmem_features)

    def _track_impl(self, variables, features, memory):
        def one_object(object_memory):
            out = self._model.apply(variables, features, object_memory, Prompts(), method=SAM2Model.track_step)
            return self._outputs(out)

        per_object = jax.vmap(one_object)(memory)  # leaves [O, 1, ...]
        return jax.tree.map(lambda x: x[:, 0], per_object)

    def _prompt_impl(self, variables, features, memory, prompts, prev_sam_mask_logits, is_init_cond_frame):
        out = self._model.apply(
            variables,
            features,
            memory,
            prompts,
            prev_sam_mask_logits=prev_sam_mask_logits,
            is_init_cond_frame=is_init_cond_frame,
            run_mem_encoder=False,
            method=SAM2Model.track_step,
        )
        return self._outputs(out)

    def _memory_impl(self, variables, features, pred_masks, object_score_logits):
        size = (self.config.image_size, self.config.image_size)
        high_res = resize_bilinear_nchw(pred_masks.astype(jnp.float32), size)
        return self._model.apply(
            variables, features, high_res, object_score_logits, True, method=SAM2Model.encode_new_memory
        )

    def cache_sizes(self) -> dict[str, int]:
        """How many programs each call has compiled (for tests and benchmarks)."""
        return {
            "encode_frame": self._encode._cache_size(),
            "track_objects": self._track._cache_size(),
            "prompt_frame": self._prompt._cache_size(),
            "encode_memory": self._memory._cache_size(),
        }
