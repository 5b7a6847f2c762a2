"""RobotSeg (spec §1): SAM 2.1 whose memory attention has SEMA's structure branch, whose mask decoder takes a
class token, and whose object tokens come from the Robot Prompt Generator.

`RobotSegModel` is `SAM2Model` with the three modules swapped in under the PyTorch names (memory_attention,
sam_mask_decoder, robot_prompt_generator) and a `track_step` that also takes the frame's model input (for SEMA's
edge map), a per-object category and an rng (for RPG's FPS start). Every SAM 2.1 branch is reused, so the
differences are exactly those of spec §1.6:
- a frame tracked from memory runs SEMA (structure logits) and RPG on the memory's spatial slots;
- a frame without memory gets RPG's no-memory tokens, and structure "maps" that are its own mask logits;
- the decoder sees `[class token, object tokens]` for objects with a category; category -1 masks them out,
  which is SAM 2.1's decoder, in the same compiled step.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.modeling.common import IMAGENET_MEAN, IMAGENET_STD
from robotseg_jax.modeling.config import RobotSegConfig, SAM2Config
from robotseg_jax.modeling.mask_decoder import ROBOT_CATEGORIES, RobotMaskDecoder
from robotseg_jax.modeling.memory_bank import MemoryInputs
from robotseg_jax.modeling.rpg import RobotPromptGenerator, foreground_on_memory_grid
from robotseg_jax.modeling.sam2 import (
    BackboneFeatures,
    ConditionedFrame,
    Prompts,
    SAM2Model,
    SamHeadOutputs,
    TrackOutputs,
    check_prompts,
    one_frame_memory,
    sam_mask_inputs,
    use_multimask,
)
from robotseg_jax.modeling.sema import SEMAMemoryAttention

# sam2's input normalisation (as inference/transforms.py applies it), undone for `edges_from_rgb`.


@flax.struct.dataclass
class RobotSegTrackOutputs(TrackOutputs):
    """`TrackOutputs` plus `structure_maps` `[B, L, H, W]` (spec §1.6 `structure_masks`, L memory-attention
    layers): SEMA's structure logits on a frame tracked from memory; on a frame without memory (and on a
    mask-as-output frame) the placeholder: the frame's own high-res mask logits repeated L times."""

    structure_maps: jax.Array


class RobotSegModel(SAM2Model):
    """RobotSegBase (spec §1.6) with the submodule and parameter names of the PyTorch model."""

    config: RobotSegConfig

    def setup(self) -> None:
        super().setup()
        cfg = self.config
        self.robot_prompt_generator = RobotPromptGenerator(embed_dim=cfg.d_model, object_token_num=cfg.object_token_num)

    def make_mask_decoder(self, decoder_class=RobotMaskDecoder, **extra) -> RobotMaskDecoder:
        return super().make_mask_decoder(decoder_class, **extra)

    def make_memory_attention(self, attention_class=SEMAMemoryAttention, **extra) -> SEMAMemoryAttention:
        cfg = self.config
        return super().make_memory_attention(
            attention_class,
            upsample_factor=cfg.backbone_stride,  # structure logits at the input resolution
            structure_strength_init=cfg.structure_strength_init,
            edge_nms_ties=cfg.edge_nms_ties,
            **extra,
        )

    # ------------------------------------------------------------------ memory
    def attend_to_memory(
        self, features: BackboneFeatures, memory: MemoryInputs, raw_image: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """SEMA memory attention, RobotSeg's `condition_on_memory` for a frame with memory: (`[B, h, w, C]` pixel
        features fused with the memory, structure logits `[B, L, H, W]`). `raw_image` is the model input
        `[B, H, W, 3]`; its edge map drives the structure branch."""
        curr = features.vision_feats
        batch, h, w, channels = curr.shape
        mem, mem_pos, mem_valid, num_ptr_tokens = self.memory_tokens(memory)
        edge_input = raw_image
        if self.config.edges_from_rgb:  # the fix of spec §7.1, off by default
            edge_input = raw_image * IMAGENET_STD + IMAGENET_MEAN
        out, structure_maps = self.memory_attention(
            curr=curr.reshape(batch, h * w, channels),
            memory=mem,
            curr_pos=features.vision_pos.reshape(batch, h * w, channels),
            memory_pos=mem_pos,
            num_obj_ptr_tokens=num_ptr_tokens,
            memory_mask=mem_valid,
            deterministic=deterministic,
            raw_image=edge_input,
        )
        return out.reshape(batch, h, w, channels), structure_maps

    def object_tokens(self, memory: MemoryInputs, rng: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """RPG's object tokens of the memory's spatial slots (spec §1.4; pointers take no part): `[B, S*K, C]`
        and their validity `[B, S*K]` (tokens of empty slots are masked out of the decoder)."""
        if memory.maskmem_foreground is None:
            raise ValueError("RobotSeg's memory needs each slot's foreground (MemoryInputs.maskmem_foreground)")
        if rng is None:
            raise ValueError("RobotSeg needs an rng on frames tracked from memory (RPG's FPS start)")
        batch = memory.maskmem_features.shape[1]
        valid = jnp.broadcast_to(memory.maskmem_valid[None], (batch, memory.maskmem_valid.shape[0]))
        return self.robot_prompt_generator(
            memory.maskmem_features.transpose(1, 0, 2, 3, 4),
            memory.maskmem_foreground.transpose(1, 0, 2, 3),
            valid,
            rng=rng,
        )

    # ------------------------------------------------------------------ tracking
    def track_step(
        self,
        features: BackboneFeatures,
        memory: MemoryInputs | None,
        prompts: Prompts,
        raw_image: jax.Array,
        robot_category: jax.Array,
        rng: jax.Array | None = None,
        prev_sam_mask_logits: jax.Array | None = None,
        is_init_cond_frame: bool = False,
        run_mem_encoder: bool = True,
        deterministic: bool = True,
    ) -> RobotSegTrackOutputs:
        """RobotSegBase.track_step for one frame; arguments as `SAM2Model.track_step`, plus:

        raw_image: `[B, H, W, 3]` the frame's model input (resized, ImageNet-normalised), which is what the
            original feeds SEMA's edge map (spec §1.3, §1.6).
        robot_category: `[B]` int, per object a `mask_decoder.robot_category_index` or -1 for none.
        rng: PRNG key for RPG's FPS starts, needed on frames tracked from memory.

        `memory` must carry `maskmem_foreground`. A mask-as-output frame ignores the category (spec §1.6).
        """
        cfg = self.config
        batch = features.vision_feats.shape[0]
        check_prompts(prompts, batch)
        robot_category = _check_robot_inputs(cfg, raw_image, robot_category, batch)
        num_points = 0 if prompts.point_labels is None else prompts.point_labels.shape[1]
        structure_maps = None
        if prompts.mask_inputs is not None and cfg.use_mask_input_as_output_without_sam:
            heads = self._use_mask_as_output(features.vision_feats, features.high_res_features, prompts.mask_inputs)
        else:
            frame = self.condition_frame(
                features, memory, is_init_cond_frame, deterministic, raw_image, robot_category, rng
            )
            structure_maps = frame.structure_maps
            heads = self._forward_sam_heads(
                frame.pix_feat,
                prompts.point_coords,
                prompts.point_labels,
                sam_mask_inputs(prompts, prev_sam_mask_logits),
                features.high_res_features,
                use_multimask(cfg, is_init_cond_frame, num_points),
                **frame.decoder_inputs,
            )
        out = self._track_outputs(features, prompts, heads, run_mem_encoder, training=not deterministic)
        fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
        return RobotSegTrackOutputs(**fields, structure_maps=self.structure_or_placeholder(structure_maps, heads))

    def condition_frame(
        self,
        features: BackboneFeatures,
        memory: MemoryInputs | None,
        is_init_cond_frame: bool,
        deterministic: bool,
        raw_image: jax.Array | None = None,
        robot_category: jax.Array | None = None,
        rng: jax.Array | None = None,
    ) -> ConditionedFrame:
        """`SAM2Model.condition_frame` with SEMA (structure logits) and RPG: a frame with memory gets the object
        tokens of its memory slots, a frame without memory RPG's no-memory tokens; the decoder inputs carry the
        category (`[B]`, -1 for none), which `track_step` has validated."""
        if not is_init_cond_frame and memory is None:
            raise ValueError("A frame that is not an initial conditioning frame needs a memory bank")
        batch = features.vision_feats.shape[0]
        structure_maps = None
        if is_init_cond_frame or self.config.num_maskmem == 0:
            pix_feat = self.condition_on_memory(features, None, deterministic)
            tokens, token_mask = self.robot_prompt_generator.no_memory_tokens(batch), None
        else:
            tokens, token_mask = self.object_tokens(memory, rng)
            pix_feat, structure_maps = self.attend_to_memory(features, memory, raw_image, deterministic)
        decoder_inputs = dict(robot_category=robot_category, object_tokens=tokens, object_token_mask=token_mask)
        return ConditionedFrame(pix_feat, decoder_inputs, structure_maps)

    def structure_or_placeholder(self, structure_maps: jax.Array | None, heads: SamHeadOutputs) -> jax.Array:
        """SEMA's structure logits, or on a frame without memory the placeholder of spec §1.6: the frame's own
        high-res mask logits repeated once per layer (never supervised, spec §4.4, §7.7)."""
        if structure_maps is not None:
            return structure_maps
        return jnp.repeat(heads.high_res_masks, self.config.num_mem_attn_layers, axis=1)

    def __call__(self, images: jax.Array) -> RobotSegTrackOutputs:
        """Touches every submodule once (for `init`): encode, prompt with a click and a category, track one frame
        from memory (SEMA and RPG)."""
        features = self.forward_image(images)
        batch = images.shape[0]
        category = jnp.zeros((batch,), jnp.int32)
        click = Prompts(jnp.zeros((batch, 1, 2), jnp.float32), jnp.ones((batch, 1), jnp.int32))
        first = self.track_step(features, None, click, images, category, is_init_cond_frame=True)
        self._use_mask_as_output(features.vision_feats, features.high_res_features, jnp.zeros(images.shape[:3]))
        grid = features.vision_feats.shape[1:3]
        memory = one_frame_memory(first, foreground_on_memory_grid(first.pred_masks[:, 0], grid))
        return self.track_step(features, memory, Prompts(), images, category, rng=jax.random.key(0))


def build_model(config: SAM2Config) -> SAM2Model:
    """The model of a config: `RobotSegModel` for a `RobotSegConfig`, `SAM2Model` otherwise."""
    return RobotSegModel(config) if isinstance(config, RobotSegConfig) else SAM2Model(config)


def _check_robot_inputs(config: RobotSegConfig, raw_image: jax.Array, robot_category, batch: int) -> jax.Array:
    """Validates track_step's RobotSeg inputs; returns the categories as an array."""
    size = config.image_size
    if raw_image.shape != (batch, size, size, 3):
        raise ValueError(
            f"raw_image must be the model input [B, {size}, {size}, 3] with B={batch}, got {raw_image.shape}"
        )
    robot_category = jnp.asarray(robot_category)
    if robot_category.shape != (batch,) or not jnp.issubdtype(robot_category.dtype, jnp.integer):
        raise ValueError(
            f"robot_category must be [B] integers with B={batch}, got {robot_category.dtype} {robot_category.shape}"
        )
    if not isinstance(robot_category, jax.core.Tracer):
        bad = set(np.asarray(robot_category).tolist()) - set(range(-1, len(ROBOT_CATEGORIES)))
        if bad:
            rows = f"0..{len(ROBOT_CATEGORIES) - 1}"
            raise ValueError(f"robot_category must be -1 (none) or a class-token row {rows}, got {sorted(bad)}")
    return robot_category
