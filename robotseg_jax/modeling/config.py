"""Model configurations: the values of sam2 1.1.0's yaml files as frozen dataclasses.

Frozen dataclasses (not ConfigDicts) because Flax module attributes must be hashable; the ml_collections
configs under `configs/` pick a model by name and apply overrides with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from robotseg_jax.errors import UserError


class ModelConfigError(UserError, ValueError):
    """No such model, no such config field, or a value the model cannot take; the message names it."""


@dataclasses.dataclass(frozen=True)
class HieraConfig:
    """Hiera trunk (sam2/modeling/backbones/hieradet.py)."""

    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 7, 2)
    global_att_blocks: tuple[int, ...] = (5, 7, 9)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    drop_path_rate: float = 0.0

    @property
    def channel_list(self) -> tuple[int, ...]:
        """Output channels of the four stages, lowest resolution first (the neck's `backbone_channel_list`)."""
        dims = [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]
        return tuple(reversed(dims))


@dataclasses.dataclass(frozen=True)
class SAM2Config:
    """Everything `SAM2Base` takes from `configs/sam2.1/sam2.1_hiera_*.yaml` (plus the video-predictor overrides)."""

    name: str = "sam2.1_hiera_t"
    hiera: HieraConfig = HieraConfig()
    image_size: int = 1024
    backbone_stride: int = 16
    d_model: int = 256  # hidden dim of neck, decoder and memory attention
    mem_dim: int = 64
    # FPN neck
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    scalp: int = 1
    # memory attention
    num_mem_attn_layers: int = 4
    mem_attn_dim_feedforward: int = 2048
    mem_attn_dropout: float = 0.1
    rope_theta: float = 10000.0
    # memory encoder
    fuser_num_layers: int = 2
    # SAM2Base flags
    num_maskmem: int = 7
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = False
    use_mask_input_as_output_without_sam: bool = True
    max_cond_frames_in_attn: int = -1
    directly_add_no_mem_embed: bool = True
    use_high_res_features_in_sam: bool = True
    multimask_output_in_sam: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    iou_prediction_use_sigmoid: bool = True
    memory_temporal_stride_for_eval: int = 1
    non_overlap_masks_for_mem_enc: bool = False
    use_obj_ptrs_in_encoder: bool = True
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    only_obj_ptrs_in_the_past_for_eval: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    use_mlp_for_obj_ptr_proj: bool = True
    no_obj_embed_spatial: bool = True
    # mask decoder: inference-time fallback from 1 mask to the most stable of 3 (the video predictor turns it on)
    dynamic_multimask_via_stability: bool = False
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98

    @property
    def image_embedding_size(self) -> int:
        return self.image_size // self.backbone_stride


@dataclasses.dataclass(frozen=True)
class RobotSegConfig(SAM2Config):
    """RobotSeg (the original's `robotseg-infer.yaml`): every SAM 2.1-T value, plus SEMA, RPG and the class token.

    `edges_from_rgb` fixes a quirk of the original, off by default so that official checkpoints behave as in
    PyTorch (RPG's unseeded FPS start is the video predictor's `seed`). `edge_nms_ties` chooses the kornia version the original is taken to run with: it calls kornia's
    Canny unpinned, and kornia's tie rule changed between 0.8.2 ("strict", the default) and 0.9.0 ("opencv").
    """

    name: str = "robotseg_hiera_t"
    object_token_num: int = 3  # RPG tokens per memory frame (robot_prompt_generator.object_token_num)
    structure_strength_init: float = 1.0  # SEMA's alpha at initialisation (the original's constructor default)
    # SEMA's edge map of the [0, 1] RGB frame instead of the ImageNet-normalised model input the original passes
    # (there its /255 heuristic nearly always fires, so the edge cue is faint and depends on the frame's brightness).
    edges_from_rgb: bool = False
    # Canny NMS tie rule: "strict" (kornia <= 0.8.2) or "opencv" (kornia 0.9.0); the original follows whichever
    # kornia is installed. See edges.canny_magnitude.
    edge_nms_ties: Literal["strict", "opencv"] = "strict"


_HIERA = {
    "t": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9)),
    "s": HieraConfig(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13)),
    "b+": HieraConfig(
        embed_dim=112,
        num_heads=2,
        stages=(2, 3, 16, 3),
        global_att_blocks=(12, 16, 20),
        window_pos_embed_bkg_spatial_size=(14, 14),
    ),
    "l": HieraConfig(
        embed_dim=144,
        num_heads=2,
        stages=(2, 6, 36, 4),
        global_att_blocks=(23, 33, 43),
        window_spec=(8, 4, 16, 8),
        window_pos_embed_bkg_spatial_size=(7, 7),
    ),
}

# SAM 2.0 lacks no_obj_embed_spatial and the object-pointer temporal encoding of SAM 2.1 (sam2 configs/sam2/*.yaml).
_SAM2_0_FLAGS = dict(
    no_obj_embed_spatial=False,
    add_tpos_enc_to_obj_ptrs=False,
    proj_tpos_enc_in_obj_ptrs=False,
    use_signed_tpos_enc_to_obj_ptrs=False,
)

MODEL_CONFIGS = {}
for _size, _hiera in _HIERA.items():
    MODEL_CONFIGS[f"sam2.1_hiera_{_size}"] = SAM2Config(name=f"sam2.1_hiera_{_size}", hiera=_hiera)
    MODEL_CONFIGS[f"sam2_hiera_{_size}"] = SAM2Config(name=f"sam2_hiera_{_size}", hiera=_hiera, **_SAM2_0_FLAGS)

# The yaml file of the reference package for each SAM 2 model, used by tests.
REFERENCE_YAML = {
    name: (f"configs/sam2.1/{name}.yaml" if name.startswith("sam2.1") else f"configs/sam2/{name}.yaml")
    for name in MODEL_CONFIGS
}

# RobotSeg is SAM 2.1 Hiera-T with the additions (every SAM 2.1-T value unchanged); its PyTorch release is
# robotseg.pt.
MODEL_CONFIGS["robotseg_hiera_t"] = RobotSegConfig(name="robotseg_hiera_t", hiera=_HIERA["t"])

# What sam2's `build_sam2_video_predictor` overrides on top of the yaml.
VIDEO_PREDICTOR_OVERRIDES = dict(
    dynamic_multimask_via_stability=True,
    binarize_mask_from_pts_for_mem_enc=True,
)


def get_model_config(name: str, **overrides) -> SAM2Config:
    """Returns the config of a named model with `overrides` applied (e.g. `image_size=512`). Raises
    ModelConfigError (a ValueError) for an unknown name or override, or an image size the trunk cannot take."""
    if name not in MODEL_CONFIGS:
        raise ModelConfigError(f"Unknown model {name!r}; known: {sorted(MODEL_CONFIGS)}")
    config = MODEL_CONFIGS[name]
    hiera_overrides = {k[len("hiera_") :]: v for k, v in overrides.items() if k.startswith("hiera_")}
    other = {k: v for k, v in overrides.items() if not k.startswith("hiera_")}
    unknown = set(other) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        raise ModelConfigError(f"Unknown config overrides {sorted(unknown)} for {name}")
    if hiera_overrides:
        other["hiera"] = dataclasses.replace(config.hiera, **hiera_overrides)
    config = dataclasses.replace(config, **other)
    if config.image_size % 32 != 0:
        raise ModelConfigError(f"image_size must be a multiple of 32 (the trunk's total stride), got {config.image_size}")
    return config
