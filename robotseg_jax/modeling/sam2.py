"""SAM 2.1 (sam2/modeling/sam2_base.py) as a Flax module: `forward_image` and the per-frame `track_step`.

`track_step` is a pure function of the params, the frame's backbone features, its prompts and a fixed-shape
`MemoryInputs` (see memory_bank.py). Which branch runs (initial conditioning frame, mask-as-output, number of
clicks, multimask) is static Python, so a tracked frame with no prompts always hits the same compiled program.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.common import MLP, resize_bilinear_nchw
from robotseg_jax.modeling.config import SAM2Config
from robotseg_jax.modeling.image_encoder import ImageEncoder
from robotseg_jax.modeling.mask_decoder import MaskDecoder
from robotseg_jax.modeling.memory_attention import MemoryAttention
from robotseg_jax.modeling.memory_bank import MemoryInputs
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
    object_score_logits [B,1], ious [B,M] and the multimask logits of the heads, and, when the memory encoder
    ran, maskmem_features [B,h,w,mem_dim] (its position encoding is a constant, `SAM2Model.maskmem_pos_enc`)."""

    pred_masks: jax.Array
    pred_masks_high_res: jax.Array
    obj_ptr: jax.Array
    object_score_logits: jax.Array
    ious: jax.Array
    low_res_multimasks: jax.Array
    high_res_multimasks: jax.Array
    maskmem_features: jax.Array | None


@flax.struct.dataclass
class ConditionedFrame:
    """A frame ready for the SAM heads: `pix_feat` [B,h,w,C] (memory-conditioned backbone features), the extra
    keyword inputs of the mask decoder (RobotSeg's category and object tokens) and, for RobotSeg on a frame with
    memory, SEMA's structure logits [B,L,H,W]."""

    pix_feat: jax.Array
    decoder_inputs: dict = flax.struct.field(default_factory=dict)
    structure_maps: jax.Array | None = None


def use_multimask(config: SAM2Config, is_init_cond_frame: bool, num_points: int) -> bool:
    """SAM2Base._use_multimask: 3 masks for 0/1 clicks (with the SAM 2.1 settings), 1 mask otherwise."""
    return (
        config.multimask_output_in_sam
        and (is_init_cond_frame or config.multimask_output_for_tracking)
        and config.multimask_min_pt_num <= num_points <= config.multimask_max_pt_num
    )


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
                MLP(cfg.d_model, cfg.d_model, 3) if cfg.use_mlp_for_obj_ptr_proj else nn.Dense(cfg.d_model)
            )
            # sam2 builds this 4x4/4 conv to turn a full-size mask prompt into a decoder mask input.
            self.mask_downsample = nn.Conv(1, (4, 4), strides=(4, 4), padding="VALID")
        if cfg.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Dense(cfg.mem_dim)

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

    # ------------------------------------------------------------------ heads
    def _forward_sam_heads(
        self,
        backbone_features: jax.Array,
        point_coords: jax.Array | None,
        point_labels: jax.Array | None,
        mask_inputs: jax.Array | None,
        high_res_features: tuple,
        multimask_output: bool,
        **decoder_inputs,
    ) -> SamHeadOutputs:
        """SAM2Base._forward_sam_heads. `mask_inputs` is [B, 1, H', W'] logits/probabilities, or None.
        `decoder_inputs` go to the mask decoder as keywords (RobotSeg's category and object tokens)."""
        cfg = self.config
        batch = backbone_features.shape[0]
        if point_coords is None:
            # No clicks: one padding point (label -1), as sam2 does.
            point_coords = jnp.zeros((batch, 1, 2), jnp.float32)
            point_labels = -jnp.ones((batch, 1), jnp.int32)
        sam_mask_prompt = None
        if mask_inputs is not None:
            mask_size = (4 * cfg.image_embedding_size, 4 * cfg.image_embedding_size)
            sam_mask_prompt = mask_inputs.astype(jnp.float32)
            if sam_mask_prompt.shape[-2:] != mask_size:
                sam_mask_prompt = _resize_antialias(sam_mask_prompt, mask_size)
            sam_mask_prompt = sam_mask_prompt.transpose(0, 2, 3, 1)  # [B, 1, h, w] -> channels-last
        sparse, dense = self.sam_prompt_encoder((point_coords, point_labels), None, sam_mask_prompt)
        low_res_multimasks, ious, sam_output_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,
            high_res_features=list(high_res_features) if high_res_features else None,
            **decoder_inputs,
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

        obj_ptr = self.obj_ptr_proj(sam_output_token)
        if cfg.pred_obj_scores:
            appearing = (
                jax.nn.sigmoid(object_score_logits) if cfg.soft_no_obj_ptr else is_obj_appearing.astype(jnp.float32)
            )
            if cfg.fixed_no_obj_ptr:
                obj_ptr = appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - appearing) * self.no_obj_ptr
        return SamHeadOutputs(
            low_res_multimasks, high_res_multimasks, ious, low_res_masks, high_res_masks, obj_ptr, object_score_logits
        )

    def _use_mask_as_output(
        self, backbone_features: jax.Array, high_res_features: tuple, mask_inputs: jax.Array
    ) -> SamHeadOutputs:
        """SAM2Base._use_mask_as_output: the input mask is the output; the decoder still makes the object pointer."""
        mask = mask_inputs.astype(jnp.float32)[:, None]  # [B, 1, H, W]
        high_res_masks = mask * MASK_OUT_SCALE + MASK_OUT_BIAS
        low_res_masks = _resize_antialias(high_res_masks, (mask.shape[-2] // 4, mask.shape[-1] // 4))
        ious = jnp.ones((mask.shape[0], 1), jnp.float32)
        downsampled = self.mask_downsample(mask.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        heads = self._forward_sam_heads(backbone_features, None, None, downsampled, high_res_features, False)
        appearing = jnp.any(mask.reshape(mask.shape[0], -1) > 0.0, axis=1)[:, None].astype(jnp.float32)
        object_score_logits = MASK_OUT_SCALE * appearing + MASK_OUT_BIAS
        obj_ptr = heads.obj_ptr
        if self.config.pred_obj_scores:
            if self.config.fixed_no_obj_ptr:
                obj_ptr = appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - appearing) * self.no_obj_ptr
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
        slots, batch, h, w, mem_dim = memory.maskmem_features.shape
        feats = memory.maskmem_features.astype(jnp.float32).transpose(1, 0, 2, 3, 4).reshape(batch, slots * h * w, mem_dim)
        tpos = self.maskmem_tpos_enc[memory.maskmem_tpos_index, 0, 0]  # [S, mem_dim]
        pos = self.maskmem_pos_enc.reshape(1, h * w, mem_dim) + tpos[:, None, :]  # [S, hw, mem_dim]
        pos = jnp.broadcast_to(pos.reshape(1, slots * h * w, mem_dim), (batch, slots * h * w, mem_dim))
        valid = jnp.broadcast_to(jnp.repeat(memory.maskmem_valid, h * w)[None], (batch, slots * h * w))

        num_ptrs = memory.obj_ptrs.shape[0]
        if num_ptrs == 0:
            return feats, pos, valid, 0
        split = cfg.d_model // cfg.mem_dim
        ptrs = memory.obj_ptrs.astype(jnp.float32)  # [P, B, C]
        if cfg.add_tpos_enc_to_obj_ptrs:
            tpos_dim = cfg.d_model if cfg.proj_tpos_enc_in_obj_ptrs else cfg.mem_dim
            ptr_pos = get_1d_sine_pe(memory.obj_ptr_tpos / memory.tpos_scale, dim=tpos_dim)
            if cfg.proj_tpos_enc_in_obj_ptrs:
                ptr_pos = self.obj_ptr_tpos_proj(ptr_pos)
        else:
            ptr_pos = jnp.zeros((num_ptrs, cfg.mem_dim), jnp.float32)
        ptr_pos = jnp.broadcast_to(ptr_pos[:, None, :], (num_ptrs, batch, cfg.mem_dim))
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

    def condition_on_memory(
        self, features: BackboneFeatures, memory: MemoryInputs | None, deterministic: bool = True
    ) -> jax.Array:
        """_prepare_memory_conditioned_features: `[B, h, w, C]` pixel features fused with the memory bank.

        `memory=None` is an initial conditioning frame: the no-memory embedding is added directly.
        """
        cfg = self.config
        curr = features.vision_feats
        batch, h, w, channels = curr.shape
        if cfg.num_maskmem == 0:
            return curr
        if memory is None:
            if not cfg.directly_add_no_mem_embed:
                raise NotImplementedError("directly_add_no_mem_embed=False is not supported (no SAM 2.1 config uses it)")
            return curr + self.no_mem_embed[0]
        mem, mem_pos, mem_valid, num_ptr_tokens = self.memory_tokens(memory)
        out = self.memory_attention(
            curr=curr.reshape(batch, h * w, channels),
            memory=mem,
            curr_pos=features.vision_pos.reshape(batch, h * w, channels),
            memory_pos=mem_pos,
            num_obj_ptr_tokens=num_ptr_tokens,
            memory_mask=mem_valid,
            deterministic=deterministic,
        )
        return out.reshape(batch, h, w, channels)

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

    # ------------------------------------------------------------------ tracking
    def track_step(
        self,
        features: BackboneFeatures,
        memory: MemoryInputs | None,
        prompts: Prompts,
        prev_sam_mask_logits: jax.Array | None = None,
        is_init_cond_frame: bool = False,
        run_mem_encoder: bool = True,
        deterministic: bool = True,
    ) -> TrackOutputs:
        """SAM2Base.track_step for one frame.

        `memory` is None on initial conditioning frames (they do not attend to memory) and for mask-as-output
        frames. `prev_sam_mask_logits` [B,1,4h,4w] feeds earlier logits with new clicks (the predictor's correction
        clicks). Training-mode behaviour (memory selection stride 1, no binarisation) follows `deterministic=False`.
        """
        cfg = self.config
        check_prompts(prompts, features.vision_feats.shape[0])
        num_points = 0 if prompts.point_labels is None else prompts.point_labels.shape[1]
        if prompts.mask_inputs is not None and cfg.use_mask_input_as_output_without_sam:
            heads = self._use_mask_as_output(features.vision_feats, features.high_res_features, prompts.mask_inputs)
        else:
            frame = self.condition_frame(features, memory, is_init_cond_frame, deterministic)
            heads = self._forward_sam_heads(
                frame.pix_feat,
                prompts.point_coords,
                prompts.point_labels,
                sam_mask_inputs(prompts, prev_sam_mask_logits),
                features.high_res_features,
                use_multimask(cfg, is_init_cond_frame, num_points),
                **frame.decoder_inputs,
            )
        return self._track_outputs(features, prompts, heads, run_mem_encoder, training=not deterministic)

    def condition_frame(
        self, features: BackboneFeatures, memory: MemoryInputs | None, is_init_cond_frame: bool, deterministic: bool
    ) -> ConditionedFrame:
        """The first half of `_track_step`: the frame's pixel features fused with its memory (the no-memory
        embedding on an initial conditioning frame). Training reuses the result for every correction click."""
        if not is_init_cond_frame and memory is None:
            raise ValueError("A frame that is not an initial conditioning frame needs a memory bank")
        return ConditionedFrame(self.condition_on_memory(features, None if is_init_cond_frame else memory, deterministic))

    def _track_outputs(
        self, features: BackboneFeatures, prompts: Prompts, heads: SamHeadOutputs, run_mem_encoder: bool, training: bool
    ) -> TrackOutputs:
        """The end of track_step: the memory encoder (if asked) on the frame's prediction, and the outputs."""
        maskmem = None
        if run_mem_encoder and self.config.num_maskmem > 0:
            maskmem = self.encode_new_memory(
                features, heads.high_res_masks, heads.object_score_logits, prompts.point_labels is not None, training
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
        )

    def __call__(self, images: jax.Array) -> TrackOutputs:
        """Touches every submodule once (for `init`): encode, prompt with a click, track one frame from memory."""
        features = self.forward_image(images)
        batch = images.shape[0]
        click = Prompts(jnp.zeros((batch, 1, 2), jnp.float32), jnp.ones((batch, 1), jnp.int32))
        first = self.track_step(features, None, click, is_init_cond_frame=True)
        self._use_mask_as_output(features.vision_feats, features.high_res_features, jnp.zeros(images.shape[:3]))
        return self.track_step(features, one_frame_memory(first), Prompts())


def one_frame_memory(previous: TrackOutputs, foreground: jax.Array | None = None) -> MemoryInputs:
    """A memory bank holding one previous frame's output (1 slot, 1 pointer), as `init` needs to touch the memory
    path. `foreground` `[B, h, w]` is RobotSeg's per-slot foreground."""
    return MemoryInputs(
        maskmem_features=previous.maskmem_features[None],
        maskmem_tpos_index=jnp.zeros((1,), jnp.int32),
        maskmem_valid=jnp.ones((1,), bool),
        obj_ptrs=previous.obj_ptr[None],
        obj_ptr_tpos=jnp.ones((1,), jnp.float32),
        obj_ptr_valid=jnp.ones((1,), bool),
        tpos_scale=jnp.ones((), jnp.float32),
        maskmem_foreground=None if foreground is None else foreground[None],
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
            bad = set(map(int, jnp.unique(labels).tolist())) - {-1, 0, 1, 2, 3}
            if bad:
                raise ValueError(f"point_labels must be in {{-1, 0, 1, 2, 3}}, got {sorted(bad)}")
    if prompts.mask_inputs is not None and prompts.mask_inputs.ndim != 3:
        raise ValueError(f"mask_inputs must be [B, H, W], got shape {prompts.mask_inputs.shape}")
