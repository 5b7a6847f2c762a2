"""Training losses: SAM 2's multistep multimask loss and RobotSeg's LET losses (MultiStepMultiMasksAndIous_LET).

Layouts follow the model: mask logits `[N, M, H, W]` (N objects, M output masks), predicted IoUs `[N, M]`,
object-score logits `[N, 1]`, targets `[N, H, W]` (bool or {0,1}), backbone features `[N, h, w, C]`.

Every per-object term is divided by `num_objects`, the number of objects in the *global* batch (clamped to >= 1).
sam2 divides each rank's loss by the rank-average object count and DDP averages the gradients over ranks, which
is the same as one loss over the global batch divided by the global count: that is what a jitted step over a
sharded global batch computes here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.common import resize_bilinear_nchw

LOSS_KEYS = ("loss_mask", "loss_dice", "loss_iou", "loss_class")
LET_KEYS = (*LOSS_KEYS, "loss_semantic", "loss_patch", "loss_structure")
# LET's semantic/patch terms compare masks and features on the stride-16 grid (64x64 at 1024).
SEMANTIC_EPS, PATCH_EPS = 1e-6, 1e-6


@flax.struct.dataclass
class StepOutputs:
    """One prediction step of one frame: all output masks, their predicted IoUs and the object score."""

    multimasks: jax.Array  # [N, M, H, W] high-res logits
    ious: jax.Array  # [N, M]
    object_score_logits: jax.Array  # [N, 1]


@dataclasses.dataclass(frozen=True)
class SAM2LossConfig:
    """MultiStepMultiMasksAndIous's settings; the defaults are SAM 2.1's training config."""

    weight_mask: float = 20.0
    weight_dice: float = 1.0
    weight_iou: float = 1.0
    weight_class: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    supervise_all_iou: bool = True
    iou_use_l1_loss: bool = True
    pred_obj_scores: bool = True

    @property
    def weights(self) -> dict[str, float]:
        return dict(zip(LOSS_KEYS, (self.weight_mask, self.weight_dice, self.weight_iou, self.weight_class)))


# ---------------------------------------------------------------------------------------------------- terms
def sigmoid_focal_loss(logits: jax.Array, targets: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """RetinaNet focal BCE per element (alpha < 0: no balancing; gamma 0: plain BCE)."""
    targets = targets.astype(logits.dtype)
    prob = jax.nn.sigmoid(logits)
    # BCE with logits in the numerically stable form PyTorch uses.
    ce = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma if gamma != 0 else ce
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def focal_per_mask(logits: jax.Array, targets: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """[N, M]: the focal loss averaged over the pixels of each mask."""
    return sigmoid_focal_loss(logits, targets, alpha, gamma).mean(axis=(-2, -1))


def dice_per_mask(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """[N, M]: 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1), p = sigmoid(logits)."""
    prob = jax.nn.sigmoid(logits)
    targets = targets.astype(prob.dtype)
    numerator = 2 * (prob * targets).sum(axis=(-2, -1))
    denominator = prob.sum(axis=(-2, -1)) + targets.sum(axis=(-2, -1))
    return 1 - (numerator + 1) / (denominator + 1)


def actual_iou(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """[N, M]: IoU of (logits > 0) with (targets > 0), 0 when both are empty (union clamped to 1)."""
    pred, gt = logits > 0, targets > 0
    inter = jnp.sum(pred & gt, axis=(-2, -1)).astype(jnp.float32)
    union = jnp.sum(pred | gt, axis=(-2, -1)).astype(jnp.float32)
    return inter / jnp.maximum(union, 1.0)


def iou_per_mask(logits: jax.Array, targets: jax.Array, pred_ious: jax.Array, use_l1: bool) -> jax.Array:
    """[N, M]: |predicted - actual IoU| (or squared)."""
    err = pred_ious - actual_iou(logits, targets)
    return jnp.abs(err) if use_l1 else err**2


def object_present(targets: jax.Array) -> jax.Array:
    """[N, 1] float: 1 where the target mask has any foreground."""
    return jnp.any(targets > 0, axis=(-2, -1))[:, None].astype(jnp.float32)


def _take(values: jax.Array, index: jax.Array) -> jax.Array:
    """values[n, index[n]] for [N, M] values."""
    return jnp.take_along_axis(values, index[:, None], axis=1)[:, 0]


# ---------------------------------------------------------------------------------------------------- SAM 2
def multimask_step_losses(
    step: StepOutputs, targets: jax.Array, num_objects: jax.Array, config: SAM2LossConfig
) -> dict[str, jax.Array]:
    """MultiStepMultiMasksAndIous._update_losses for one step: the terms summed over objects, each / num_objects.

    With several output masks only the one with the lowest `w_mask * focal + w_dice * dice` (first on ties) gets
    the mask and dice terms; the IoU term averages over all masks with `supervise_all_iou`, else takes that one.
    Mask, dice and IoU terms count only for objects present in the target.
    """
    targets = targets[:, None].astype(jnp.float32)  # [N, 1, H, W], broadcast against the M masks
    focal = focal_per_mask(step.multimasks, targets, config.focal_alpha, config.focal_gamma)
    dice = dice_per_mask(step.multimasks, targets)
    iou = iou_per_mask(step.multimasks, targets, step.ious, config.iou_use_l1_loss)
    present = object_present(targets[:, 0])[:, 0]
    if config.pred_obj_scores:
        bce = sigmoid_focal_loss(step.object_score_logits, present[:, None], alpha=-1.0, gamma=0.0)
        loss_class = bce.mean(axis=1).sum() / num_objects
    else:
        present = jnp.ones_like(present)
        loss_class = jnp.zeros((), jnp.float32)
    if step.multimasks.shape[1] > 1:
        best = jnp.argmin(focal * config.weights["loss_mask"] + dice * config.weights["loss_dice"], axis=1)
        focal, dice = _take(focal, best), _take(dice, best)
        iou = iou.mean(axis=1) if config.supervise_all_iou else _take(iou, best)
    else:
        focal, dice, iou = focal[:, 0], dice[:, 0], iou[:, 0]
    return {
        "loss_mask": jnp.sum(focal * present) / num_objects,
        "loss_dice": jnp.sum(dice * present) / num_objects,
        "loss_iou": jnp.sum(iou * present) / num_objects,
        "loss_class": loss_class,
    }


def sam2_loss(
    frames: Sequence[Sequence[StepOutputs]],
    targets: jax.Array,
    num_objects: jax.Array,
    config: SAM2LossConfig = SAM2LossConfig(),
) -> dict[str, jax.Array]:
    """SAM 2's loss of a clip: per-term sums over frames and their steps, and the weighted total under "core_loss".

    frames: for each frame, its prediction steps (1, or more with correction clicks); targets: [T, N, H, W].
    """
    totals = {k: jnp.zeros((), jnp.float32) for k in LOSS_KEYS}
    for steps, frame_targets in zip(frames, targets, strict=True):
        for step in steps:
            for k, v in multimask_step_losses(step, frame_targets, num_objects, config).items():
                totals[k] = totals[k] + v
    totals["core_loss"] = sum(config.weights.get(k, 0.0) * totals[k] for k in LOSS_KEYS)
    return totals


# ---------------------------------------------------------------------------------------------------- LET
@dataclasses.dataclass(frozen=True)
class LETLossConfig:
    """MultiStepMultiMasksAndIous_LET's settings; the defaults are robotseg-train.yaml's.

    `cycle` configures SAM 2's terms (mask, dice, IoU, class) on the first and last stage, which also pick the
    best mask by `cycle.weight_mask * focal + cycle.weight_dice * dice`; the other weights are LET's own terms.
    """

    # Mask weight 5 (SAM 2.1: 20), dice, IoU and class 1, focal and IoU settings as SAM 2.1's. The yaml sets
    # supervise_all_iou, but the reference LET loss ignores it and trains the IoU head on the selected mask only.
    # True trains all masks' IoUs, which inference needs to pick among the 3 masks when the IoU head does not
    # start from SAM 2.1's (training from scratch).
    cycle: SAM2LossConfig = dataclasses.field(
        default_factory=lambda: SAM2LossConfig(weight_mask=5.0, supervise_all_iou=False)
    )
    weight_semantic: float = 1.0
    weight_patch: float = 1.0
    weight_structure: float = 1.0

    @property
    def weights(self) -> dict[str, float]:
        return {
            **self.cycle.weights,
            "loss_semantic": self.weight_semantic,
            "loss_patch": self.weight_patch,
            "loss_structure": self.weight_structure,
        }


@flax.struct.dataclass
class LETStage:
    """What LET needs from one clip stage: its prediction steps, its stride-16 backbone features (before memory
    attention) and, on the last stage, the 4 SEMA structure logits [N, 4, H, W]."""

    steps: tuple[StepOutputs, ...]
    backbone_features: jax.Array  # [N, h, w, C]
    structure_logits: jax.Array | None = None


def masked_average(features: jax.Array, weights: jax.Array) -> jax.Array:
    """[N, C]: L2-normalised sum(E * q) / max(sum(q), eps) of [N,h,w,C] features under [N,h,w] weights."""
    pooled = jnp.einsum("nhwc,nhw->nc", features, weights) / jnp.maximum(weights.sum(axis=(1, 2)), SEMANTIC_EPS)[:, None]
    # F.normalize: x / max(|x|, 1e-12). A pooled vector of exactly zero (an all-background prediction) must get
    # torch's zero gradient; d|x|/dx at 0 is NaN in JAX, so the norm takes the square root only where it is > 0.
    squared = jnp.sum(pooled**2, axis=-1, keepdims=True)
    norm = jnp.where(squared > 0, jnp.sqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)
    return pooled / jnp.maximum(norm, 1e-12)


def soft_iou_loss(prob: jax.Array, targets: jax.Array) -> jax.Array:
    """Per object 1 - (sum(p t) + eps) / (sum(p + t - p t) + eps), after bilinear resizing both to the feature grid
    is done by the caller."""
    inter = (prob * targets).sum(axis=(-2, -1))
    union = (prob + targets - prob * targets).sum(axis=(-2, -1))
    return 1 - (inter + PATCH_EPS) / (union + PATCH_EPS)


def structure_loss(structure_logits: jax.Array, structure_target: jax.Array) -> jax.Array:
    """Mean over [N, 4, H, W] of |sigmoid(S) - Y|, Y [N, H, W] repeated over the 4 maps."""
    return jnp.mean(jnp.abs(jax.nn.sigmoid(structure_logits) - structure_target[:, None]))


def let_loss(
    stages: Sequence[LETStage],
    targets: jax.Array,
    structure_target: jax.Array | None,
    num_objects: jax.Array,
    config: LETLossConfig = LETLossConfig(),
    mean_term_objects: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """MultiStepMultiMasksAndIous_LET over a clip: per-term sums over stages and the weighted total.

    targets: [T, N, H, W] (GT on the first and last stage, pseudo masks between); structure_target: [N, H, W]
    normalised Laplacian of the last stage's target (`edges.laplacian_structure_target`), needed when T > 1.
    Roles: cycle terms (SAM 2's mask/dice/IoU/class, best mask by 5*focal + dice, IoU at that mask) on the first
    and last stage; semantic and patch terms on the stages between; the structure term on the last stage.
    The semantic, patch and structure terms are means over the objects, divided by `mean_term_objects` (default
    `num_objects`): under data parallelism the reference divides them by the objects per GPU, not in total.
    """
    mean_norm = num_objects if mean_term_objects is None else mean_term_objects
    num_stages = len(stages)
    if targets.shape[0] != num_stages:
        raise ValueError(f"{num_stages} stages but targets for {targets.shape[0]}")
    totals = {k: jnp.zeros((), jnp.float32) for k in LET_KEYS}
    grid = stages[0].backbone_features.shape[1:3]
    # The anchor: stage 0's backbone features averaged under stage 0's (downsampled) target; not detached.
    anchor_weights = resize_bilinear_nchw(targets[0].astype(jnp.float32), grid)
    anchor = masked_average(stages[0].backbone_features, anchor_weights)

    for t, (stage, stage_targets) in enumerate(zip(stages, targets)):
        is_cycle, is_between = t in (0, num_stages - 1), 0 < t < num_stages - 1
        small_targets = resize_bilinear_nchw(stage_targets.astype(jnp.float32), grid)
        for step in stage.steps:
            if is_cycle:
                for k, v in multimask_step_losses(step, stage_targets, num_objects, config.cycle).items():
                    totals[k] = totals[k] + v
            if is_between:
                best = jnp.argmax(step.ious, axis=1)
                prob = resize_bilinear_nchw(jax.nn.sigmoid(_take_mask(step.multimasks, best)), grid)
                pooled = masked_average(stage.backbone_features, prob)
                similarity = jnp.mean(jnp.sum(pooled * anchor, axis=-1))
                totals["loss_semantic"] = totals["loss_semantic"] + (1 - similarity) / mean_norm
        if is_between:
            last = stage.steps[-1]
            prob = resize_bilinear_nchw(jax.nn.sigmoid(_take_mask(last.multimasks, jnp.argmax(last.ious, axis=1))), grid)
            totals["loss_patch"] = totals["loss_patch"] + jnp.mean(soft_iou_loss(prob, small_targets)) / mean_norm
        if t == num_stages - 1 and num_stages > 1:
            if stage.structure_logits is None or structure_target is None:
                raise ValueError("the last stage needs structure logits and a structure target")
            totals["loss_structure"] = (
                totals["loss_structure"] + structure_loss(stage.structure_logits, structure_target) / mean_norm
            )
    totals["core_loss"] = sum(config.weights[k] * totals[k] for k in LET_KEYS)
    return totals


def _take_mask(multimasks: jax.Array, index: jax.Array) -> jax.Array:
    """[N, H, W]: multimasks[n, index[n]]."""
    return jnp.take_along_axis(multimasks, index[:, None, None, None], axis=1)[:, 0]
