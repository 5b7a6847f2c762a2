"""RobotSeg: SAM 2.1 whose memory attention has SEMA's structure branch, whose mask decoder takes a class token,
and whose object tokens come from the Robot Prompt Generator (RPG).

`RobotSegModel` is `SAM2Model` with the three modules swapped in under the PyTorch names (memory_attention,
sam_mask_decoder, robot_prompt_generator) and four hooks overridden; `track_step` and every other block are
SAM 2.1's. The hooks give exactly the original's `RobotSegBase` differences:
- a frame tracked from memory runs SEMA on the frame's model input (structure logits) and RPG on the memory's
  spatial slots (`attend_to_memory`, `robot_tokens`);
- a frame without memory gets RPG's no-memory tokens, and structure "maps" that are its own high-res mask logits
  repeated once per layer (`frame_structure_maps`; never supervised);
- the decoder sees `[class token, object tokens]` for objects with a category; category -1 masks them out,
  which is SAM 2.1's decoder, in the same compiled step;
- each memory entry keeps the frame's foreground on the memory grid, which RPG clusters (`memory_foreground`).
The inputs come as one `RobotInputs` (image, category, RPG key).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.modeling.common import IMAGENET_MEAN, IMAGENET_STD
from robotseg_jax.modeling.config import RobotSegConfig, SAM2Config
from robotseg_jax.modeling.mask_decoder import RobotMaskDecoder
from robotseg_jax.modeling.memory_bank import MemoryInputs
from robotseg_jax.modeling.rpg import RobotPromptGenerator, foreground_on_memory_grid
from robotseg_jax.modeling.sam2 import (
    BackboneFeatures,
    RobotInputs,
    RobotTokens,
    SAM2Model,
    SamHeadOutputs,
)
from robotseg_jax.modeling.sema import SEMAMemoryAttention


class RobotSegModel(SAM2Model):
    """RobotSegBase with the submodule and parameter names of the PyTorch model."""

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

    # ------------------------------------------------------------------ hooks
    def attend_to_memory(
        self, features: BackboneFeatures, memory: MemoryInputs, robot: RobotInputs | None, deterministic: bool
    ) -> tuple[jax.Array, jax.Array]:
        """SEMA memory attention: (`[B, h, w, C]` pixel features fused with the memory, structure logits
        `[B, L, H, W]`). The edge map is computed from `robot.image`, the model input, as in the original."""
        robot = _checked(self.config, robot, features, needs_rng=False)
        edge_input = robot.image
        if self.config.edges_from_rgb:  # a fix, off by default: the edge map of the [0, 1] RGB frame
            edge_input = robot.image * IMAGENET_STD + IMAGENET_MEAN
        out, structure_maps = self.memory_attention(
            **self.memory_attention_inputs(features, memory), deterministic=deterministic, raw_image=edge_input
        )
        return out.reshape(features.vision_feats.shape), structure_maps

    def robot_tokens(
        self, features: BackboneFeatures, memory: MemoryInputs | None, robot: RobotInputs | None
    ) -> RobotTokens | None:
        """The class token's category and RPG's object tokens: from the memory's spatial slots on a frame with
        memory, the learned no-memory tokens on a frame without. No `robot` (or category -1) is the original's
        `robot_inputs=None`: SAM 2.1's decoder."""
        batch = features.vision_feats.shape[0]
        if memory is None:
            if robot is None:
                return None
            robot = _checked(self.config, robot, features, needs_rng=False)
            return RobotTokens(robot.category, self.robot_prompt_generator.no_memory_tokens(batch))
        robot = _checked(self.config, robot, features, needs_rng=True)
        tokens, token_mask = self.object_tokens(memory, robot.rng)
        return RobotTokens(robot.category, tokens, token_mask)

    def memory_foreground(self, low_res_masks: jax.Array) -> jax.Array:
        """RPG's `mask_fg` of a frame: its low-res logits `[B, 1, 4h, 4w]` -> `[B, h, w]` bool on the memory grid."""
        grid = (self.config.image_embedding_size, self.config.image_embedding_size)
        return foreground_on_memory_grid(low_res_masks[:, 0], grid)

    def frame_structure_maps(self, structure_maps: jax.Array | None, heads: SamHeadOutputs) -> jax.Array:
        """SEMA's structure logits, or on a frame without memory (and a mask-as-output frame) the original's
        placeholder: the frame's own high-res mask logits repeated once per layer (never supervised)."""
        if structure_maps is not None:
            return structure_maps
        return jnp.repeat(heads.high_res_masks, self.config.num_mem_attn_layers, axis=1)

    # ------------------------------------------------------------------ RPG
    def object_tokens(self, memory: MemoryInputs, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """RPG's object tokens of the memory's spatial slots (pointers take no part): `[B, S*K, C]` and their
        validity `[B, S*K]` (tokens of empty slots are masked out of the decoder)."""
        if memory.maskmem_foreground is None:
            raise ValueError("RobotSeg's memory needs each slot's foreground (MemoryInputs.maskmem_foreground)")
        batch = memory.maskmem_features.shape[1]
        valid = jnp.broadcast_to(memory.maskmem_valid[None], (batch, memory.maskmem_valid.shape[0]))
        return self.robot_prompt_generator(
            memory.maskmem_features.transpose(1, 0, 2, 3, 4),
            memory.maskmem_foreground.transpose(1, 0, 2, 3),
            valid,
            rng=rng,
        )


def build_model(config: SAM2Config) -> SAM2Model:
    """The model of a config: `RobotSegModel` for a `RobotSegConfig`, `SAM2Model` otherwise."""
    return RobotSegModel(config) if isinstance(config, RobotSegConfig) else SAM2Model(config)


def _checked(config: RobotSegConfig, robot: RobotInputs | None, features: BackboneFeatures, needs_rng: bool):
    """Validates RobotSeg's inputs for a batch of `features`; returns them with the category as an array."""
    batch = features.vision_feats.shape[0]
    if robot is None:
        raise ValueError("RobotSeg tracks a frame from memory with robot=RobotInputs(image, category, rng)")
    size = config.image_size
    if robot.image.shape != (batch, size, size, 3):
        raise ValueError(
            f"RobotInputs.image must be the model input [B, {size}, {size}, 3] with B={batch}, got {robot.image.shape}"
        )
    category = jnp.asarray(robot.category)
    if category.shape != (batch,) or not jnp.issubdtype(category.dtype, jnp.integer):
        raise ValueError(
            f"RobotInputs.category must be [B] integers with B={batch}, got {category.dtype} {category.shape}"
        )
    if not isinstance(category, jax.core.Tracer):
        bad = set(np.asarray(category).tolist()) - set(range(-1, len(ROBOT_CATEGORIES)))
        if bad:
            rows = f"0..{len(ROBOT_CATEGORIES) - 1}"
            raise ValueError(f"RobotInputs.category must be -1 (none) or a class-token row {rows}, got {sorted(bad)}")
    if needs_rng and robot.rng is None:
        raise ValueError("RobotSeg needs an rng on frames tracked from memory (RobotInputs.rng: RPG's FPS start)")
    return robot.replace(category=category)
