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

Each stage is composed of the model's public blocks (`condition_frame`, `forward_sam_heads`, `use_mask_as_output`,
`memory_entry`), the same ones `track_step` is made of. The memory bank is `memory_bank.ClipMemory`: one slot per
clip frame with validity masks, so the memory a stage attends to is a function of the (possibly traced) stage
index. Consecutive plain tracked stages (no clicks, not conditioning: stages 1..6 of a RobotSeg clip) therefore
can run as one `lax.scan` whose body compiles once, attending over every slot with the unused ones masked. A
stage run on its own (unrolled, or alone in its group) instead attends to the frames it selects only, so stage 1
pays for one memory, not for T (in an 8-frame clip, half of the memory attention). Either way attention over the
valid slots equals sam2's attention over the concatenated selection; only the order of the
(permutation-invariant) memory tokens differs.

RobotSeg: every SAM pass gets the batch's categories except the mask-as-output frames and the correction re-runs,
which the original runs without `robot_inputs`, so they have no class and no object tokens.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.modeling.memory_bank import ClipMemory, MemoryEntry, MemoryInputs
from robotseg_jax.modeling.sam2 import (
    BackboneFeatures,
    ConditionedFrame,
    RobotInputs,
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
    are sampled from); category: [B] int32 robot category per clip (RobotSeg; unused by SAM 2.1); from_gt:
    [len(plan.correct_frames), plan.num_correction_pts] bool (`prompts.draw_prompts`); rng: PRNG key;
    unroll: run every stage as its own copy instead of scanning the plain tracked ones (see
        `StepConfig.unroll_stages`); the values are the same up to float round-off (and the dropout draws).
    Returns the outputs of stages 0..T-1 in time order.
    """
    cfg = model.config
    batch, num_frames = images.shape[:2]
    if num_frames != plan.num_frames:
        raise ValueError(f"the prompt plan is for {plan.num_frames} frames, the clip has {num_frames}")
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
    per_stage = dict(features=features, gt=gt_masks.swapaxes(0, 1), raw_image=images.swapaxes(0, 1))
    memory_dtype = features.vision_feats.dtype

    def run_stage(kind: StageKind, memory: ClipMemory | None, t, inputs: dict, from_gt_row, present=None):
        key = jax.random.fold_in(stage_key, t)
        memory_inputs = None if kind.is_init or kind.mask_as_output else memory.inputs_for(cfg, t, present)
        robot = RobotInputs(inputs["raw_image"], category, jax.random.fold_in(key, 0))
        out, entry = model.apply(
            variables,
            kind,
            inputs["features"],
            memory_inputs,
            inputs["gt"],
            robot,
            from_gt_row,
            key,
            method=_stage,
            rngs=rngs(jax.random.fold_in(key, 1)),
        )
        if memory is None:  # the first stage (an initial conditioning frame) sets the slots' shapes
            memory = ClipMemory.empty(entry, num_frames, memory_dtype)
        return memory.write(t, entry, kind.is_cond), out

    memory = None
    # Which frames are in memory, known while tracing: a stage run on its own attends to those slots only.
    stored, is_cond = np.zeros(num_frames, bool), np.zeros(num_frames, bool)
    outputs: dict[int, StageOutputs] = {}
    for kind, stages in stage_groups(plan):
        if unroll or len(stages) == 1:
            for t in stages:
                row = from_gt[plan.correct_frames.index(t)] if kind.num_corrections else None
                inputs = jax.tree.map(lambda x, t=t: x[t], per_stage)
                memory, outputs[t] = run_stage(kind, memory, t, inputs, row, (stored.copy(), is_cond.copy()))
                stored[t], is_cond[t] = True, kind.is_cond
        else:
            index = jnp.asarray(stages)
            inputs = jax.tree.map(lambda x, index=index: x[index], per_stage)
            body = lambda mem, xs, kind=kind: run_stage(kind, mem, xs[0], xs[1], None)
            memory, stacked = jax.lax.scan(body, memory, (index, inputs))
            for i, t in enumerate(stages):
                outputs[t] = jax.tree.map(lambda x, i=i: x[i], stacked)
                stored[t], is_cond[t] = True, kind.is_cond
    return [outputs[t] for t in range(num_frames)]


def _stage(
    model: SAM2Model,
    kind: StageKind,
    features: BackboneFeatures,
    memory: MemoryInputs | None,
    gt: jax.Array,
    robot: RobotInputs,
    from_gt_row: jax.Array | None,
    key: jax.Array,
) -> tuple[StageOutputs, MemoryEntry]:
    """One stage (`SAM2Train.track_step`), as a method of the bound model: its outputs and its memory entry."""
    structure_maps = None
    if kind.mask_as_output:
        heads = model.use_mask_as_output(features, gt.astype(robot.image.dtype))
        steps, mask_from_points = (heads,), False
    else:
        frame = model.condition_frame(features, memory, robot, deterministic=False)
        structure_maps = frame.structure_maps
        steps = _sam_passes(model, kind, frame, features, gt, from_gt_row, key)
        heads, mask_from_points = steps[-1], kind.first_num_points + kind.num_corrections > 0
    entry = model.memory_entry(features, heads, mask_from_points, training=True)
    structure_maps = model.frame_structure_maps(structure_maps, heads)
    return StageOutputs(steps, features.vision_feats, structure_maps), entry


def _sam_passes(
    model: SAM2Model,
    kind: StageKind,
    frame: ConditionedFrame,
    features: BackboneFeatures,
    gt: jax.Array,
    from_gt_row: jax.Array | None,
    key: jax.Array,
) -> tuple[SamHeadOutputs, ...]:
    """The first SAM pass of a stage and its correction re-runs (`_iter_correct_pt_sampling`)."""
    cfg = model.config
    clicks = initial_points(jax.random.fold_in(key, 1), kind.first_prompt, gt)
    coords, labels = clicks if clicks is not None else (None, None)
    multimask = use_multimask(cfg, kind.is_init, kind.first_num_points)
    heads = model.forward_sam_heads(frame, features.high_res_features, coords, labels, None, multimask)
    steps = [heads]
    correcting = frame.without_category()  # the original's correction re-runs pass no robot inputs
    for k in range(kind.num_corrections):
        new_coords, new_labels = correction_click(
            jax.random.fold_in(key, 2 + k), heads.high_res_masks[:, 0], gt, from_gt_row[k]
        )
        coords = new_coords if coords is None else jnp.concatenate([coords, new_coords], axis=1)
        labels = new_labels if labels is None else jnp.concatenate([labels, new_labels], axis=1)
        multimask = use_multimask(cfg, kind.is_init, kind.first_num_points + k + 1)
        heads = model.forward_sam_heads(
            correcting, features.high_res_features, coords, labels, heads.low_res_masks, multimask
        )
        steps.append(heads)
    return tuple(steps)
