"""SAM 2.1 (sam2/modeling/sam2_base.py) as a Flax module: the image encoder, the building blocks of a frame step,
and `track_step` written once from them.

The blocks are sam2's: `forward_image`, `condition_frame` (`_prepare_memory_conditioned_features`),
`forward_sam_heads` (`_forward_sam_heads`), `use_mask_as_output` and `memory_entry` (`_encode_new_memory` plus
the object pointer). `track_step` composes them for inference; training's clip forward composes the same blocks
with correction clicks, as `SAM2Train` does. RobotSeg (robotseg.py) overrides the hooks that differ and takes its
inputs as one optional `RobotInputs`, which SAM 2.1 accepts and does not use.

Every step is a pure function of the params, the frame's backbone features, its prompts and a fixed-shape
`MemoryInputs` (memory_bank.py). Which branch runs (initial conditioning frame, mask-as-output, number of clicks,
multimask) is static Python, so a tracked frame with no prompts always hits the same compiled program.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from robotseg_jax.constants import POINT_LABELS
from robotseg_jax.modeling.common import MLP, Dense, resize_bilinear_nchw
from robotseg_jax.modeling.config import SAM2Config
from robotseg_jax.modeling.image_encoder import ImageEncoder
from robotseg_jax.modeling.mask_decoder import MaskDecoder
from robotseg_jax.modeling.memory_attention import MemoryAttention
from robotseg_jax.modeling.memory_bank import MemoryEntry, MemoryInputs, one_frame_memory
from robotseg_jax.modeling.memory_encoder import MemoryEncoder
from robotseg_jax.modeling.position_encoding import (
    get_1d_sine_pe,
    sine_position_encoding,
)
from robotseg_jax.modeling.prompt_encoder import PromptEncoder

# Mask logit written where the object score says "absent" (sam2_base.NO_OBJ_SCORE).
NO_OBJ_SCORE = -1024.0
# Mask-as-output logits: the input mask mapped to -10 / +10.
MASK_OUT_SCALE, MASK_OUT_BIAS = 20.0, -10.0


@flax.struct.dataclass
class BackboneFeatures:
    """One frame's image features, channels-last.

    vision_feats: [B, h, w, C] stride-16 features; vision_pos: [B, h, w, C] their sine encoding;
    high_res_features: the stride-4 and stride-8 maps after the decoder's conv_s0/conv_s1 ([B,4h,4w,C/8],
    [B,2h,2w,C/4]), or an empty tuple when the model does not use them.
    """

    vision_feats: jax.Array
    vision_pos: jax.Array
    high_res_features: tuple


@flax.struct.dataclass
class Prompts:
    """Clicks in model-input pixels (x, y) with labels in {-1 (pad), 0, 1, 2/3 (box corners)}, and/or a mask.

    point_coords: [B, P, 2] float32 or None; point_labels: [B, P] int32 or None;
    mask_inputs: [B, H, W] float (a binary mask at image resolution for mask-as-output, or SAM's mask prompt).
    """

    point_coords: jax.Array | None = None
    point_labels: jax.Array | None = None
    mask_inputs: jax.Array | None = None


@flax.struct.dataclass
class RobotInputs:
    """RobotSeg's per-frame inputs, one optional argument of the step functions (SAM 2.1 does not use them).

    image: [B, H, W, 3] the frame's model input (resized, ImageNet-normalised): the original feeds this tensor to
        SEMA's edge map, so it is needed on frames tracked from memory.
    category: [B] int32 per object, the class-token row (`constants.ROBOT_CATEGORIES` order) or -1 for none; -1
        runs the decoder without class and object tokens (the original's `robot_inputs=None`).
    rng: PRNG key of RPG's farthest-point-sampling starts, needed on frames tracked from memory.
    """

    image: jax.Array
    category: jax.Array
    rng: jax.Array | None = None


@flax.struct.dataclass
class RobotTokens:
    """RobotSeg's extra mask-decoder prompts of a frame: per object its category [B] (-1: none) and RPG's object
    tokens [B, K, C] with their validity [B, K] (None: all valid)."""

    category: jax.Array
    object_tokens: jax.Array
    object_token_mask: jax.Array | None = None

    def without_category(self) -> RobotTokens:
        """The same tokens with every category -1: the decoder then sees SAM 2.1's token sequence."""
        return self.replace(category=jnp.full_like(self.category, -1))


@flax.struct.dataclass
class ConditionedFrame:
    """A frame ready for the SAM heads: `pix_feat` [B,h,w,C] (backbone features fused with the memory, or with
    the no-memory embedding), RobotSeg's decoder tokens (None for SAM 2.1) and, for RobotSeg on a frame with
    memory, SEMA's structure logits [B,L,H,W]."""

    pix_feat: jax.Array
    robot_tokens: RobotTokens | None = None
    structure_maps: jax.Array | None = None

    def without_category(self) -> ConditionedFrame:
        """The frame as the original's correction re-runs decode it: without class and object tokens."""
        if self.robot_tokens is None:
            return self
        return self.replace(robot_tokens=self.robot_tokens.without_category())


@flax.struct.dataclass
class SamHeadOutputs:
    """What `_forward_sam_heads` returns in sam2, with masks as [B, M, H, W]."""

    low_res_multimasks: jax.Array
    high_res_multimasks: jax.Array
    ious: jax.Array
    low_res_masks: jax.Array
    high_res_masks: jax.Array
    obj_ptr: jax.Array
    object_score_logits: jax.Array


@flax.struct.dataclass
class TrackOutputs:
    """`track_step`'s `current_out`: pred_masks [B,1,4h,4w], pred_masks_high_res [B,1,H,W], obj_ptr [B,C],
    object_score_logits [B,1], ious [B,M] and the multimask logits of the heads; when the memory encoder ran,
    maskmem_features [B,h,w,mem_dim] (its position encoding is a constant, `SAM2Model.maskmem_pos_enc`);
    RobotSeg's structure logits [B,L,H,W] (`SAM2Model.frame_structure_maps`; None for SAM 2.1)."""

    pred_masks: jax.Array
    pred_masks_high_res: jax.Array
    obj_ptr: jax.Array
    object_score_logits: jax.Array
    ious: jax.Array
    low_res_multimasks: jax.Array
    high_res_multimasks: jax.Array
    maskmem_features: jax.Array | None
    structure_maps: jax.Array | None = None


class SAM2Model(nn.Module):
    """SAM2Base with the submodule and parameter names of the PyTorch model (one mapping, torch_keys.py)."""

    config: SAM2Config

    def setup(self):
        cfg = self.config
        emb = cfg.image_embedding_size
        self.image_encoder = ImageEncoder(cfg)
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=cfg.d_model,
            image_embedding_size=(emb, emb),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = self.make_mask_decoder()
        self.memory_attention = self.make_memory_attention()
        self.memory_encoder = MemoryEncoder(out_dim=cfg.mem_dim, in_dim=cfg.d_model, fuser_num_layers=cfg.fuser_num_layers)
        trunc = nn.initializers.truncated_normal(0.02)
        self.maskmem_tpos_enc = self.param("maskmem_tpos_enc", trunc, (cfg.num_maskmem, 1, 1, cfg.mem_dim))
        self.no_mem_embed = self.param("no_mem_embed", trunc, (1, 1, cfg.d_model))
        self.no_mem_pos_enc = self.param("no_mem_pos_enc", trunc, (1, 1, cfg.d_model))
        if cfg.pred_obj_scores and cfg.use_obj_ptrs_in_encoder:
            self.no_obj_ptr = self.param("no_obj_ptr", trunc, (1, cfg.d_model))
        if cfg.no_obj_embed_spatial:
            self.no_obj_embed_spatial = self.param("no_obj_embed_spatial", trunc, (1, cfg.mem_dim))
        if cfg.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj = (
                MLP(cfg.d_model, cfg.d_model, 3) if cfg.use_mlp_for_obj_ptr_proj else Dense(cfg.d_model)
            )
            # sam2 builds this 4x4/4 conv to turn a full-size mask prompt into a decoder mask input.
            self.mask_downsample = nn.Conv(1, (4, 4), strides=(4, 4), padding="VALID")
        if cfg.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = Dense(cfg.mem_dim)

    # Hooks for a subclass (RobotSeg) that swaps in extended modules under the same names.
    def make_mask_decoder(self, decoder_class: type[MaskDecoder] = MaskDecoder, **extra) -> MaskDecoder:
        cfg = self.config
        return decoder_class(
            transformer_dim=cfg.d_model,
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=cfg.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=cfg.iou_prediction_use_sigmoid,
            pred_obj_scores=cfg.pred_obj_scores,
            pred_obj_scores_mlp=cfg.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=cfg.use_multimask_token_for_obj_ptr,
            dynamic_multimask_via_stability=cfg.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=cfg.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=cfg.dynamic_multimask_stability_thresh,
            **extra,
        )

    def make_memory_attention(
        self, attention_class: type[MemoryAttention] = MemoryAttention, **extra
    ) -> MemoryAttention:
        cfg = self.config
        return attention_class(
            d_model=cfg.d_model,
            num_layers=cfg.num_mem_attn_layers,
            dim_feedforward=cfg.mem_attn_dim_feedforward,
            dropout=cfg.mem_attn_dropout,
            kv_in_dim=cfg.mem_dim,
            rope_theta=cfg.rope_theta,
            **extra,
        )

    # ------------------------------------------------------------------ image
    def forward_image(self, images: jax.Array, deterministic: bool = True) -> BackboneFeatures:
        """Backbone features of normalised images `[B, H, W, 3]` (SAM2Base.forward_image + _prepare_backbone_features)."""
        cfg = self.config
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got shape {images.shape}")
        if images.shape[1:3] != (cfg.image_size, cfg.image_size):
            raise ValueError(
                f"images must be {cfg.image_size}x{cfg.image_size} for {cfg.name} (resize first), got "
                f"{images.shape[1]}x{images.shape[2]}"
            )
        out = self.image_encoder(images, deterministic=deterministic)
        fpn, pos = out["backbone_fpn"], out["vision_pos_enc"]
        high_res = ()
        if cfg.use_high_res_features_in_sam:
            high_res = tuple(self.sam_mask_decoder.project_high_res_features(fpn[0], fpn[1]))
        return BackboneFeatures(vision_feats=fpn[-1], vision_pos=pos[-1], high_res_features=high_res)


    # ------------------------------------------------------------------ memory conditioning
    def condition_frame(
        self,
        features: BackboneFeatures,
        memory: MemoryInputs | None,
        robot: RobotInputs | None = None,
        deterministic: bool = True,
    ) -> ConditionedFrame:
        """`_prepare_memory_conditioned_features`: the frame's pixel features fused with its memory, or, with
        `memory=None` (an initial conditioning frame), with the no-memory embedding; plus the decoder tokens of
        `robot_tokens`. Training reuses the result for every correction click of the frame."""
        has_memory = memory is not None and self.config.num_maskmem > 0
        if has_memory:
            pix_feat, structure_maps = self.attend_to_memory(features, memory, robot, deterministic)
        else:
            pix_feat, structure_maps = self.no_memory_features(features), None
        tokens = self.robot_tokens(features, memory if has_memory else None, robot)
        return ConditionedFrame(pix_feat, tokens, structure_maps)

    def no_memory_features(self, features: BackboneFeatures) -> jax.Array:
        """A frame without memory: `[B, h, w, C]` features plus the no-memory embedding (what sam2's image predictor
        also feeds its decoder), or the bare features for a model without memory (num_maskmem 0)."""
        if self.config.num_maskmem == 0:
            return features.vision_feats
        if not self.config.directly_add_no_mem_embed:
            raise NotImplementedError("directly_add_no_mem_embed=False is not supported (no SAM 2.1 config uses it)")
        return features.vision_feats + self.no_mem_embed[0]

    def memory_attention_inputs(self, features: BackboneFeatures, memory: MemoryInputs) -> dict:
        """The memory attention's keyword inputs for a frame: its tokens and positions, the memory tokens, their
        positions and validity, and the number of pointer tokens (which take no RoPE)."""
        batch, h, w, channels = features.vision_feats.shape
        mem, mem_pos, mem_valid, num_ptr_tokens = self.memory_tokens(memory)
        return dict(
            curr=features.vision_feats.reshape(batch, h * w, channels),
            memory=mem,
            curr_pos=features.vision_pos.reshape(batch, h * w, channels),
            memory_pos=mem_pos,
            num_obj_ptr_tokens=num_ptr_tokens,
            memory_mask=mem_valid,
        )

    def attend_to_memory(
        self, features: BackboneFeatures, memory: MemoryInputs, robot: RobotInputs | None, deterministic: bool
    ) -> tuple[jax.Array, jax.Array | None]:
        """Hook: memory attention of a frame with memory, `[B, h, w, C]` pixel features and structure logits
        (None here; RobotSeg's SEMA makes them)."""
        del robot  # SAM 2.1's memory attention takes no robot inputs
        out = self.memory_attention(**self.memory_attention_inputs(features, memory), deterministic=deterministic)
        return out.reshape(features.vision_feats.shape), None

    def robot_tokens(
        self, features: BackboneFeatures, memory: MemoryInputs | None, robot: RobotInputs | None
    ) -> RobotTokens | None:
        """Hook: the frame's extra decoder tokens (RobotSeg's class and RPG tokens); SAM 2.1 has none."""
        del features, memory, robot
        return None

    # ------------------------------------------------------------------ heads
    def decode_masks(
        self,
        pix_feat: jax.Array,
        high_res_features: tuple,
        points: tuple[jax.Array, jax.Array] | None,
        mask_prompt: jax.Array | None,
        multimask_output: bool,
        robot_tokens: RobotTokens | None = None,
        repeat_image: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Prompt encoder and mask decoder: `points` (coords [B,P,2], labels [B,P]) or None, a low-res mask prompt
        [B, 4h, 4w, 1] or None -> (low-res mask logits [B,M,4h,4w], IoUs [B,M], SAM output tokens, object score
        logits [B,1]). `repeat_image` shares one image between B prompt sets (sam2's image predictor)."""
        sparse, dense = self.sam_prompt_encoder(points, None, mask_prompt)
        extra = {}
        if robot_tokens is not None:
            extra = dict(
                robot_category=robot_tokens.category,
                object_tokens=robot_tokens.object_tokens,
                object_token_mask=robot_tokens.object_token_mask,
            )
        return self.sam_mask_decoder(
            image_embeddings=pix_feat,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=repeat_image,
            high_res_features=list(high_res_features) if high_res_features else None,
            **extra,
        )

    def forward_sam_heads(
        self,
        frame: ConditionedFrame,
        high_res_features: tuple,
        point_coords: jax.Array | None = None,
        point_labels: jax.Array | None = None,
        mask_inputs: jax.Array | None = None,
        multimask_output: bool = False,
    ) -> SamHeadOutputs:
        """SAM2Base._forward_sam_heads on a conditioned frame. `mask_inputs` is [B, 1, H', W'] logits or
        probabilities (resized to the low-res size), or None."""
        cfg = self.config
        batch = frame.pix_feat.shape[0]
        if point_coords is None:
            # No clicks: one padding point (label -1), as sam2 does.
            point_coords = jnp.zeros((batch, 1, 2), jnp.float32)
            point_labels = -jnp.ones((batch, 1), jnp.int32)
        mask_prompt = None
        if mask_inputs is not None:
            mask_size = (4 * cfg.image_embedding_size, 4 * cfg.image_embedding_size)
            mask_prompt = mask_inputs.astype(jnp.float32)
            if mask_prompt.shape[-2:] != mask_size:
                mask_prompt = _resize_antialias(mask_prompt, mask_size)
            mask_prompt = mask_prompt.transpose(0, 2, 3, 1)  # [B, 1, h, w] -> channels-last
        low_res_multimasks, ious, sam_output_tokens, object_score_logits = self.decode_masks(
            frame.pix_feat, high_res_features, (point_coords, point_labels), mask_prompt, multimask_output,
            frame.robot_tokens,
        )
        is_obj_appearing = object_score_logits > 0
        if cfg.pred_obj_scores:
            # The spatial memory takes a hard object/no-object decision, consistent with the mask prediction.
            low_res_multimasks = jnp.where(is_obj_appearing[:, :, None, None], low_res_multimasks, NO_OBJ_SCORE)
        low_res_multimasks = low_res_multimasks.astype(jnp.float32)
        high_res_multimasks = resize_bilinear_nchw(low_res_multimasks, (cfg.image_size, cfg.image_size))

        sam_output_token = sam_output_tokens[:, 0]
        if multimask_output:
            best = jnp.argmax(ious, axis=-1)
            take = lambda x: jnp.take_along_axis(x, best[:, None, None, None], axis=1)
            low_res_masks, high_res_masks = take(low_res_multimasks), take(high_res_multimasks)
            if sam_output_tokens.shape[1] > 1:
                sam_output_token = jnp.take_along_axis(sam_output_tokens, best[:, None, None], axis=1)[:, 0]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks

        appearing = jax.nn.sigmoid(object_score_logits) if cfg.soft_no_obj_ptr else is_obj_appearing
        obj_ptr = self.object_pointer(self.obj_ptr_proj(sam_output_token), appearing)
        return SamHeadOutputs(
            low_res_multimasks, high_res_multimasks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits
        )

    def object_pointer(self, obj_ptr: jax.Array, appearing: jax.Array) -> jax.Array:
        """The pointer of an object that may be absent: `appearing` [B, 1] (bool or a probability) blends in the
        learned no-object pointer, as sam2 does with pred_obj_scores."""
        cfg = self.config
        if not cfg.pred_obj_scores:
            return obj_ptr
        appearing = appearing.astype(jnp.float32)
        if cfg.fixed_no_obj_ptr:
            obj_ptr = appearing * obj_ptr
        return obj_ptr + (1 - appearing) * self.no_obj_ptr

    def use_mask_as_output(self, features: BackboneFeatures, mask_inputs: jax.Array) -> SamHeadOutputs:
        """SAM2Base._use_mask_as_output: the input mask `[B, H, W]` is the output; the decoder still makes the
        object pointer (from the bare features, with no category)."""
        mask = mask_inputs.astype(jnp.float32)[:, None]  # [B, 1, H, W]
        high_res_masks = mask * MASK_OUT_SCALE + MASK_OUT_BIAS
        low_res_masks = _resize_antialias(high_res_masks, (mask.shape[-2] // 4, mask.shape[-1] // 4))
        ious = jnp.ones((mask.shape[0], 1), jnp.float32)
        downsampled = self.mask_downsample(mask.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        heads = self.forward_sam_heads(
            ConditionedFrame(features.vision_feats), features.high_res_features, mask_inputs=downsampled
        )
        appearing = jnp.any(mask.reshape(mask.shape[0], -1) > 0.0, axis=1)[:, None]
        object_score_logits = MASK_OUT_SCALE * appearing.astype(jnp.float32) + MASK_OUT_BIAS
        obj_ptr = self.object_pointer(heads.obj_ptr, appearing)
        return SamHeadOutputs(
            low_res_masks, high_res_masks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits
        )

    # ------------------------------------------------------------------ memory
    @property
    def maskmem_pos_enc(self) -> jax.Array:
        """The memory's spatial encoding `[h, w, mem_dim]`: a constant, identical for every frame."""
        emb = self.config.image_embedding_size
        return jnp.asarray(sine_position_encoding(emb, emb, self.config.mem_dim))

    def memory_tokens(self, memory: MemoryInputs) -> tuple[jax.Array, jax.Array, jax.Array, int]:
        """Flattens a `MemoryInputs` into (memory [B,M,mem_dim], memory_pos [B,M,mem_dim], valid [B,M], n_ptr_tokens).

        Spatial tokens come first (slot by slot), then the pointer tokens, each pointer split into
        d_model // mem_dim tokens, as sam2 concatenates them.
        """
        cfg = self.config
        # the compute dtype (the params'): stored features (bfloat16 by default) are upcast in float32 as sam2's
        # torch.cat with the float32 pointers does; the bfloat16 mode attends over bfloat16 memory
        dtype = self.maskmem_tpos_enc.dtype
        slots, batch, h, w, mem_dim = memory.maskmem_features.shape
        feats = memory.maskmem_features.astype(dtype).transpose(1, 0, 2, 3, 4).reshape(batch, slots * h * w, mem_dim)
        tpos = self.maskmem_tpos_enc[memory.maskmem_tpos_index, 0, 0]  # [S, mem_dim]
        pos = self.maskmem_pos_enc.astype(dtype).reshape(1, h * w, mem_dim) + tpos[:, None, :]  # [S, hw, mem_dim]
        pos = jnp.broadcast_to(pos.reshape(1, slots * h * w, mem_dim), (batch, slots * h * w, mem_dim))
        valid = jnp.broadcast_to(jnp.repeat(memory.maskmem_valid, h * w)[None], (batch, slots * h * w))

        num_ptrs = memory.obj_ptrs.shape[0]
        if num_ptrs == 0:
            return feats, pos, valid, 0
        split = cfg.d_model // cfg.mem_dim
        ptrs = memory.obj_ptrs.astype(dtype)  # [P, B, C]
        if cfg.add_tpos_enc_to_obj_ptrs:
            tpos_dim = cfg.d_model if cfg.proj_tpos_enc_in_obj_ptrs else cfg.mem_dim
            ptr_pos = get_1d_sine_pe(memory.obj_ptr_tpos / memory.tpos_scale, dim=tpos_dim)
            if cfg.proj_tpos_enc_in_obj_ptrs:
                ptr_pos = self.obj_ptr_tpos_proj(ptr_pos)
        else:
            ptr_pos = jnp.zeros((num_ptrs, cfg.mem_dim), jnp.float32)
        ptr_pos = jnp.broadcast_to(ptr_pos[:, None, :].astype(dtype), (num_ptrs, batch, cfg.mem_dim))
        if split > 1:
            ptrs = ptrs.reshape(num_ptrs, batch, split, cfg.mem_dim).transpose(1, 0, 2, 3)
            ptrs = ptrs.reshape(batch, num_ptrs * split, cfg.mem_dim)
            ptr_pos = jnp.repeat(ptr_pos.transpose(1, 0, 2), split, axis=1)
        else:
            ptrs, ptr_pos = ptrs.transpose(1, 0, 2), ptr_pos.transpose(1, 0, 2)
        ptr_valid = jnp.broadcast_to(jnp.repeat(memory.obj_ptr_valid, split)[None], (batch, num_ptrs * split))
        return (
            jnp.concatenate([feats, ptrs], axis=1),
            jnp.concatenate([pos, ptr_pos], axis=1),
            jnp.concatenate([valid, ptr_valid], axis=1),
            num_ptrs * split,
        )

    def encode_new_memory(
        self,
        features: BackboneFeatures,
        pred_masks_high_res: jax.Array,
        object_score_logits: jax.Array,
        is_mask_from_pts: bool,
        training: bool = False,
    ) -> jax.Array:
        """SAM2Base._encode_new_memory: `[B, h, w, mem_dim]` memory features of a frame and its predicted mask."""
        cfg = self.config
        masks = pred_masks_high_res
        if cfg.non_overlap_masks_for_mem_enc and not training:
            masks = apply_non_overlapping_constraints(masks)
        if cfg.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts and not training:
            mask_for_mem = (masks > 0).astype(jnp.float32)
        else:
            mask_for_mem = jax.nn.sigmoid(masks)
        if cfg.sigmoid_scale_for_mem_enc != 1.0:
            mask_for_mem = mask_for_mem * cfg.sigmoid_scale_for_mem_enc
        if cfg.sigmoid_bias_for_mem_enc != 0.0:
            mask_for_mem = mask_for_mem + cfg.sigmoid_bias_for_mem_enc
        out = self.memory_encoder(features.vision_feats, mask_for_mem.transpose(0, 2, 3, 1), skip_mask_sigmoid=True)
        maskmem = out["vision_features"]
        if cfg.no_obj_embed_spatial:
            absent = 1.0 - (object_score_logits > 0).astype(jnp.float32)  # [B, 1]
            maskmem = maskmem + absent[:, None, None, :] * self.no_obj_embed_spatial[0]
        return maskmem


    def memory_foreground(self, low_res_masks: jax.Array) -> jax.Array | None:
        """Hook: what a memory entry keeps of the frame's mask besides its memory features (RobotSeg's foreground
        on the memory grid, for RPG); SAM 2.1 keeps nothing. `low_res_masks` is [B, 1, 4h, 4w] logits."""
        del low_res_masks
        return None

    def memory_entry(
        self, features: BackboneFeatures, heads: SamHeadOutputs, is_mask_from_pts: bool, training: bool = False
    ) -> MemoryEntry:
        """What a frame contributes to later frames' memory: its encoded mask memory, its object pointer and (hook)
        its foreground on the memory grid."""
        return MemoryEntry(
            maskmem_features=self.encode_new_memory(
                features, heads.high_res_masks, heads.object_score_logits, is_mask_from_pts, training
            ),
            obj_ptr=heads.obj_ptr,
            foreground=self.memory_foreground(heads.low_res_masks),
        )

    def frame_structure_maps(self, structure_maps: jax.Array | None, heads: SamHeadOutputs) -> jax.Array | None:
        """Hook: a frame's structure logits for the outputs (RobotSeg fills frames without them); None here."""
        del heads
        return structure_maps

    # ------------------------------------------------------------------ tracking
    def track_step(
        self,
        features: BackboneFeatures,
        memory: MemoryInputs | None,
        prompts: Prompts,
        robot: RobotInputs | None = None,
        prev_sam_mask_logits: jax.Array | None = None,
        is_init_cond_frame: bool = False,
        run_mem_encoder: bool = True,
        deterministic: bool = True,
    ) -> TrackOutputs:
        """SAM2Base.track_step for one frame.

        `memory` is ignored on initial conditioning frames (they do not attend to memory) and on mask-as-output
        frames, and may be None there. `robot` carries RobotSeg's inputs (unused by SAM 2.1).
        `prev_sam_mask_logits` [B,1,4h,4w] feeds earlier logits with new clicks (the predictor's correction
        clicks). Training-mode behaviour (no binarisation, dropout) follows `deterministic=False`.
        """
        cfg = self.config
        check_prompts(prompts, features.vision_feats.shape[0])
        num_points = 0 if prompts.point_labels is None else prompts.point_labels.shape[1]
        structure_maps = None
        if prompts.mask_inputs is not None and cfg.use_mask_input_as_output_without_sam:
            heads = self.use_mask_as_output(features, prompts.mask_inputs)
        else:
            if not is_init_cond_frame and memory is None:
                raise ValueError("A frame that is not an initial conditioning frame needs a memory bank")
            frame = self.condition_frame(features, None if is_init_cond_frame else memory, robot, deterministic)
            structure_maps = frame.structure_maps
            heads = self.forward_sam_heads(
                frame,
                features.high_res_features,
                prompts.point_coords,
                prompts.point_labels,
                sam_mask_inputs(prompts, prev_sam_mask_logits),
                use_multimask(cfg, is_init_cond_frame, num_points),
            )
        maskmem = None
        if run_mem_encoder and cfg.num_maskmem > 0:
            maskmem = self.encode_new_memory(
                features, heads.high_res_masks, heads.object_score_logits, prompts.point_labels is not None,
                not deterministic,
            )
        return TrackOutputs(
            pred_masks=heads.low_res_masks,
            pred_masks_high_res=heads.high_res_masks,
            obj_ptr=heads.obj_ptr,
            object_score_logits=heads.object_score_logits,
            ious=heads.ious,
            low_res_multimasks=heads.low_res_multimasks,
            high_res_multimasks=heads.high_res_multimasks,
            maskmem_features=maskmem,
            structure_maps=self.frame_structure_maps(structure_maps, heads),
        )

    def __call__(self, images: jax.Array) -> TrackOutputs:
        """Touches every submodule once (for `init`): encode, prompt with a click (and a category), take a mask as
        output, track one frame from memory."""
        features = self.forward_image(images)
        batch = images.shape[0]
        robot = RobotInputs(images, jnp.zeros((batch,), jnp.int32), jax.random.key(0))
        click = Prompts(jnp.zeros((batch, 1, 2), jnp.float32), jnp.ones((batch, 1), jnp.int32))
        frame = self.condition_frame(features, None, robot)
        first = self.forward_sam_heads(frame, features.high_res_features, click.point_coords, click.point_labels)
        self.use_mask_as_output(features, jnp.zeros(images.shape[:3]))
        memory = one_frame_memory(self.memory_entry(features, first, is_mask_from_pts=True))
        return self.track_step(features, memory, Prompts(), robot)


def use_multimask(config: SAM2Config, is_init_cond_frame: bool, num_points: int) -> bool:
    """SAM2Base._use_multimask: 3 masks for 0/1 clicks (with the SAM 2.1 settings), 1 mask otherwise."""
    return (
        config.multimask_output_in_sam
        and (is_init_cond_frame or config.multimask_output_for_tracking)
        and config.multimask_min_pt_num <= num_points <= config.multimask_max_pt_num
    )


def sam_mask_inputs(prompts: Prompts, prev_sam_mask_logits: jax.Array | None) -> jax.Array | None:
    """The decoder's mask prompt `[B, 1, H', W']` on a frame decoded by SAM: the prompt mask, or the previous
    logits that come with correction clicks (sam2's predictor), or None."""
    mask_inputs = None if prompts.mask_inputs is None else prompts.mask_inputs[:, None]
    if prev_sam_mask_logits is not None:
        if prompts.point_labels is None or mask_inputs is not None:
            raise ValueError("prev_sam_mask_logits goes with new clicks and no mask input")
        mask_inputs = prev_sam_mask_logits
    return mask_inputs


def _resize_antialias(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`F.interpolate(bilinear, align_corners=False, antialias=True)` on the last two axes (downsampling masks)."""
    return jax.image.resize(x, (*x.shape[:-2], *size), method="linear", antialias=True)


def apply_non_overlapping_constraints(pred_masks: jax.Array) -> jax.Array:
    """Keeps only the highest-scoring object per pixel (objects on axis 0); the others are clamped to <= -10."""
    if pred_masks.shape[0] == 1:
        return pred_masks
    keep = jnp.argmax(pred_masks, axis=0, keepdims=True) == jnp.arange(pred_masks.shape[0])[:, None, None, None]
    return jnp.where(keep, pred_masks, jnp.minimum(pred_masks, -10.0))


def check_prompts(prompts: Prompts, batch: int) -> None:
    coords, labels = prompts.point_coords, prompts.point_labels
    if (coords is None) != (labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if coords is not None:
        if coords.ndim != 3 or coords.shape[-1] != 2:
            raise ValueError(f"point_coords must be [B, P, 2], got shape {coords.shape}")
        if labels.ndim != 2 or labels.shape != coords.shape[:2]:
            raise ValueError(f"point_labels must be [B, P] matching point_coords {coords.shape}, got {labels.shape}")
        if coords.shape[0] != batch:
            raise ValueError(f"prompts are for {coords.shape[0]} objects but the features have batch {batch}")
        if not isinstance(labels, jax.core.Tracer):
            bad = set(map(int, jnp.unique(labels).tolist())) - set(POINT_LABELS)
            if bad:
                raise ValueError(f"point_labels must be in {set(POINT_LABELS)}, got {sorted(bad)}")
    if prompts.mask_inputs is not None and prompts.mask_inputs.ndim != 3:
        raise ValueError(f"mask_inputs must be [B, H, W], got shape {prompts.mask_inputs.shape}")
