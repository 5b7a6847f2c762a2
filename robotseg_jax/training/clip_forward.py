"""The training forward pass over a clip: sam2's `SAM2Train.forward` (training/model/sam2.py) in JAX.

The image encoder runs once over every frame of the batch; then the stages are tracked in processing order
(initial conditioning frames first, then the rest ascending), each stage exactly as `SAM2Train.track_step`:
- a mask-prompted initial conditioning frame takes its GT mask as the output (mask-as-output);
- otherwise the frame is conditioned on its memory (the no-memory embedding on initial conditioning frames),
  its first clicks (a noisy box or a uniform click, in point mode) go to the SAM heads, and a frame to correct
  gets `num_correction_pts` more clicks, each from the errors of the previous prediction (or from the GT), each
  re-running the heads on the same conditioned features with all clicks and the previous low-res logits;
- the memory encoder then encodes the final prediction, which joins the memory bank as a conditioning frame
  (initial conditioning and corrected frames) or a tracked one.

The memory bank is `ClipMemory`: one slot per clip frame with validity masks (DESIGN.md principle 2), so the
memory a stage attends to is a function of the (possibly traced) stage index. Consecutive plain tracked stages
(no clicks, not conditioning: stages 1..6 of a RobotSeg clip) therefore run as one `lax.scan` whose body compiles
once, instead of an unrolled copy per stage. Attention over the valid slots equals sam2's attention over the
concatenated selection; only the order of the (permutation-invariant) memory tokens differs.

RobotSeg (spec 4.3): every SAM pass gets the batch's categories except the mask-as-output frames and the
correction re-runs (which the reference runs without `robot_inputs`, so they have no class and no object tokens).
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.config import SAM2Config
from robotseg_jax.modeling.memory_bank import MemoryInputs
from robotseg_jax.modeling.robotseg import RobotSegModel
from robotseg_jax.modeling.rpg import foreground_on_memory_grid
from robotseg_jax.modeling.sam2 import (
    BackboneFeatures,
    SAM2Model,
    SamHeadOutputs,
    use_multimask,
)
from robotseg_jax.training.prompts import (
    FirstPrompt,
    PromptPlan,
    correction_click,
    initial_points,
)


@flax.struct.dataclass
class StageOutputs:
    """One clip stage's predictions for the loss: every SAM pass (`steps`: the first, then one per correction
    click), the stage's stride-16 backbone features before memory attention `[B,h,w,C]`, and RobotSeg's
    structure logits `[B,L,H,W]` (SEMA's, or the placeholder on frames without memory; None for SAM 2)."""

    steps: tuple[SamHeadOutputs, ...]
    backbone_features: jax.Array
    structure_maps: jax.Array | None


@flax.struct.dataclass
class ClipMemory:
    """Every clip frame's memory entry, `[T, ...]` slots written as stages finish.

    maskmem: [T,B,h,w,mem_dim]; obj_ptr: [T,B,C]; foreground: [T,B,h,w] bool (RobotSeg's RPG) or None;
    stored / is_cond: [T] bool, whether the frame has been tracked and whether it is a conditioning frame.
    """

    maskmem: jax.Array
    obj_ptr: jax.Array
    foreground: jax.Array | None
    stored: jax.Array
    is_cond: jax.Array

    @classmethod
    def empty(cls, config: SAM2Config, num_frames: int, batch: int, dtype, with_foreground: bool) -> ClipMemory:
        emb = config.image_embedding_size
        return cls(
            maskmem=jnp.zeros((num_frames, batch, emb, emb, config.mem_dim), dtype),
            obj_ptr=jnp.zeros((num_frames, batch, config.d_model), dtype),
            foreground=jnp.zeros((num_frames, batch, emb, emb), bool) if with_foreground else None,
            stored=jnp.zeros((num_frames,), bool),
            is_cond=jnp.zeros((num_frames,), bool),
        )

    def write(self, t, maskmem: jax.Array, obj_ptr: jax.Array, foreground: jax.Array | None, is_cond: bool):
        return ClipMemory(
            maskmem=self.maskmem.at[t].set(maskmem.astype(self.maskmem.dtype)),
            obj_ptr=self.obj_ptr.at[t].set(obj_ptr.astype(self.obj_ptr.dtype)),
            foreground=None if self.foreground is None else self.foreground.at[t].set(foreground),
            stored=self.stored.at[t].set(True),
            is_cond=self.is_cond.at[t].set(is_cond),
        )

    def inputs_for(self, config: SAM2Config, t) -> MemoryInputs:
        """What stage `t` attends to in training (forward tracking, stride 1), as `memory_bank.select_memory`
        with training=True: every conditioning frame (temporal position 0), the tracked frames t-1 .. t-(n-1)
        (n = num_maskmem) at positions n-1 .. 1, and the pointers of every conditioning frame and of the tracked
        frames t-1 .. t-(P-1) (P = min(T, max_obj_ptrs_in_encoder)) with their signed temporal distance."""
        if config.max_cond_frames_in_attn != -1:
            raise NotImplementedError("training attends to every conditioning frame (max_cond_frames_in_attn=-1)")
        num_frames = self.stored.shape[0]
        frames = jnp.arange(num_frames)
        distance = t - frames
        tracked = self.stored & ~self.is_cond
        spatial_valid = (self.stored & self.is_cond) | (tracked & (distance >= 1) & (distance <= config.num_maskmem - 1))
        tpos_index = jnp.where(self.is_cond, config.num_maskmem - 1, distance - 1)
        max_ptrs = min(num_frames, config.max_obj_ptrs_in_encoder)
        if config.use_obj_ptrs_in_encoder:
            obj_ptrs = self.obj_ptr
            ptr_valid = (self.stored & self.is_cond) | (tracked & (distance >= 1) & (distance <= max_ptrs - 1))
            ptr_tpos = (distance if config.use_signed_tpos_enc_to_obj_ptrs else jnp.abs(distance)).astype(jnp.float32)
        else:
            obj_ptrs, ptr_valid, ptr_tpos = self.obj_ptr[:0], jnp.zeros((0,), bool), jnp.zeros((0,), jnp.float32)
        return MemoryInputs(
            maskmem_features=self.maskmem,
            maskmem_tpos_index=jnp.clip(tpos_index, 0, config.num_maskmem - 1).astype(jnp.int32),
            maskmem_valid=spatial_valid,
            obj_ptrs=obj_ptrs,
            obj_ptr_tpos=ptr_tpos,
            obj_ptr_valid=ptr_valid,
            tpos_scale=jnp.asarray(max(1, max_ptrs - 1), jnp.float32),
            maskmem_foreground=self.foreground,
        )


@dataclasses.dataclass(frozen=True)
class StageKind:
    """The static structure of one stage under a `PromptPlan` (what changes the program)."""

    is_init: bool
    mask_as_output: bool
    first_prompt: FirstPrompt
    first_num_points: int
    num_corrections: int
    is_cond: bool


def stage_kind(plan: PromptPlan, t: int) -> StageKind:
    is_init = t in plan.init_cond_frames
    return StageKind(
        is_init=is_init,
        mask_as_output=plan.mode == "mask" and is_init,
        first_prompt=plan.first_prompt(t),
        first_num_points=plan.num_points(t, 0),
        num_corrections=plan.num_correction_pts if t in plan.correct_frames else 0,
        is_cond=t in plan.cond_frames,
    )


def stage_groups(plan: PromptPlan) -> list[tuple[StageKind, tuple[int, ...]]]:
    """The processing order cut into runs that share a program: consecutive plain tracked stages (no prompt, no
    correction, not conditioning) form one run; every other stage is a run of its own."""
    groups: list[tuple[StageKind, list[int]]] = []
    for t in plan.processing_order:
        kind = stage_kind(plan, t)
        plain = not kind.is_init and kind.num_corrections == 0 and not kind.is_cond
        if plain and groups and groups[-1][0] == kind:
            groups[-1][1].append(t)
        else:
            groups.append((kind, [t]))
    return [(kind, tuple(frames)) for kind, frames in groups]


def track_clip(
    model: SAM2Model,
    params: dict,
    images: jax.Array,
    gt_masks: jax.Array,
    category: jax.Array,
    plan: PromptPlan,
    from_gt: jax.Array,
    rng: jax.Array,
    unroll: bool = False,
) -> list[StageOutputs]:
    """Runs a batch of clips in training mode (dropout and drop path on).

    images: [B, T, S, S, 3] normalised (in the compute dtype); gt_masks: [B, T, S, S] bool (the targets clicks
    are sampled from); category: [B] int32 robot category per clip (RobotSeg; unused by SAM 2); from_gt:
    [len(plan.correct_frames), plan.num_correction_pts] bool (`prompts.draw_prompts`); rng: PRNG key;
    unroll: unroll the scans over plain tracked stages (same values; see `StepConfig.unroll_stages`).
    Returns the outputs of stages 0..T-1 in time order.
    """
    cfg = model.config
    batch, num_frames = images.shape[:2]
    if num_frames != plan.num_frames:
        raise ValueError(f"the prompt plan is for {plan.num_frames} frames, the clip has {num_frames}")
    is_robotseg = isinstance(model, RobotSegModel)
    variables = {"params": params}
    dropout_key, stage_key = jax.random.split(rng)

    def rngs(key):
        return {"dropout": key, "drop_path": jax.random.fold_in(key, 1)}

    # One encoder pass over all B*T frames, frame-major, then [T, B, ...] per feature.
    frames_first = images.swapaxes(0, 1).reshape(num_frames * batch, *images.shape[2:])
    features = model.apply(
        variables, frames_first, deterministic=False, method=SAM2Model.forward_image, rngs=rngs(dropout_key)
    )
    features = jax.tree.map(lambda x: x.reshape(num_frames, batch, *x.shape[1:]), features)
    per_stage = dict(
        features=features,
        gt=gt_masks.swapaxes(0, 1),
        raw_image=images.swapaxes(0, 1),
    )
    memory = ClipMemory.empty(cfg, num_frames, batch, features.vision_feats.dtype, with_foreground=is_robotseg)

    def run_stage(kind: StageKind, memory: ClipMemory, t, inputs: dict, from_gt_row):
        key = jax.random.fold_in(stage_key, t)
        memory_inputs = None if kind.is_init or kind.mask_as_output else memory.inputs_for(cfg, t)
        out, (maskmem, obj_ptr, foreground) = model.apply(
            variables,
            kind,
            inputs["features"],
            memory_inputs,
            inputs["gt"],
            inputs["raw_image"],
            category,
            from_gt_row,
            key,
            method=_stage,
            rngs=rngs(jax.random.fold_in(key, 1)),
        )
        return memory.write(t, maskmem, obj_ptr, foreground, kind.is_cond), out

    outputs: dict[int, StageOutputs] = {}
    for kind, stages in stage_groups(plan):
        index = jnp.asarray(stages)
        inputs = jax.tree.map(lambda x, index=index: x[index], per_stage)
        if len(stages) == 1:
            t = stages[0]
            row = from_gt[plan.correct_frames.index(t)] if kind.num_corrections else None
            memory, out = run_stage(kind, memory, t, jax.tree.map(lambda x: x[0], inputs), row)
            outputs[t] = out
        else:
            body = lambda mem, xs, kind=kind: run_stage(kind, mem, xs[0], xs[1], None)
            memory, stacked = jax.lax.scan(body, memory, (index, inputs), unroll=unroll)
            for i, t in enumerate(stages):
                outputs[t] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return [outputs[t] for t in range(num_frames)]


def _stage(
    model: SAM2Model,
    kind: StageKind,
    features: BackboneFeatures,
    memory: MemoryInputs | None,
    gt: jax.Array,
    raw_image: jax.Array,
    category: jax.Array,
    from_gt_row: jax.Array | None,
    key: jax.Array,
) -> tuple[StageOutputs, tuple]:
    """One stage (`SAM2Train.track_step`), as a method of the bound model: its outputs and its memory entry."""
    cfg = model.config
    is_robotseg = isinstance(model, RobotSegModel)
    structure_maps = None
    if kind.mask_as_output:
        heads = model._use_mask_as_output(features.vision_feats, features.high_res_features, gt.astype(raw_image.dtype))
        steps, mask_from_points = (heads,), False
    else:
        robot = {}
        if is_robotseg:
            robot = dict(raw_image=raw_image, robot_category=category, rng=jax.random.fold_in(key, 0))
        frame = model.condition_frame(features, memory, kind.is_init, False, **robot)
        structure_maps = frame.structure_maps
        steps = _sam_passes(model, kind, frame, features, gt, from_gt_row, key)
        heads, mask_from_points = steps[-1], kind.first_num_points + kind.num_corrections > 0
    if is_robotseg:
        structure_maps = model.structure_or_placeholder(structure_maps, heads)
    maskmem = model.encode_new_memory(
        features, heads.high_res_masks, heads.object_score_logits, mask_from_points, training=True
    )
    grid = (cfg.image_embedding_size, cfg.image_embedding_size)
    foreground = foreground_on_memory_grid(heads.low_res_masks[:, 0], grid) if is_robotseg else None
    return StageOutputs(steps, features.vision_feats, structure_maps), (maskmem, heads.obj_ptr, foreground)


def _sam_passes(
    model: SAM2Model,
    kind: StageKind,
    frame,
    features: BackboneFeatures,
    gt: jax.Array,
    from_gt_row: jax.Array | None,
    key: jax.Array,
) -> tuple[SamHeadOutputs, ...]:
    """The first SAM pass of a stage and its correction re-runs (`_iter_correct_pt_sampling`)."""
    cfg = model.config
    clicks = initial_points(jax.random.fold_in(key, 1), kind.first_prompt, gt)
    coords, labels = clicks if clicks is not None else (None, None)
    heads = model._forward_sam_heads(
        frame.pix_feat, coords, labels, None, features.high_res_features,
        use_multimask(cfg, kind.is_init, kind.first_num_points), **frame.decoder_inputs,
    )
    steps = [heads]
    # The reference's correction re-runs pass no robot inputs: no class token, no object tokens.
    decoder_inputs = dict(frame.decoder_inputs)
    if "robot_category" in decoder_inputs:
        decoder_inputs["robot_category"] = jnp.full_like(decoder_inputs["robot_category"], -1)
    for k in range(kind.num_corrections):
        new_coords, new_labels = correction_click(
            jax.random.fold_in(key, 2 + k), heads.high_res_masks[:, 0], gt, from_gt_row[k]
        )
        coords = new_coords if coords is None else jnp.concatenate([coords, new_coords], axis=1)
        labels = new_labels if labels is None else jnp.concatenate([labels, new_labels], axis=1)
        heads = model._forward_sam_heads(
            frame.pix_feat, coords, labels, heads.low_res_masks, features.high_res_features,
            use_multimask(cfg, kind.is_init, kind.first_num_points + k + 1), **decoder_inputs,
        )
        steps.append(heads)
    return tuple(steps)
