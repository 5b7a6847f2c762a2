"""Training prompt simulation: sam2's `SAM2Train` (training/model/sam2.py), with RobotSeg's robot-prompt mode, and
the samplers of sam2/modeling/sam2_utils.py.

The reference decides a batch's prompt structure on the host with one numpy Generator (`default_rng(42)`, the
same on every rank): the mode (robot / mask / point), box or click per initial conditioning frame, the frames
that get correction clicks and, per correction click, whether it is sampled from the GT instead of the errors.
`draw_prompts` consumes such a Generator in exactly the reference's order and splits the outcome into a hashable
`PromptPlan` (what changes the compiled program: a `jit` static argument) and the from-GT flags (a plain bool
array, traced, so they do not multiply compiled programs).

Pixels are sampled on the device by pure functions of PRNG keys with static shapes. Coordinates follow sam2:
(x, y) = (column, row) of the chosen pixel as float32, with no +0.5, in input-image pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.constants import BOX_CORNER_LABELS

Mode = Literal["robot", "mask", "point"]
FirstPrompt = Literal["none", "click", "box"]


# ------------------------------------------------------------------------------------------ device samplers
def _sample_from_errors(key: jax.Array, gt: jax.Array, pred: jax.Array) -> tuple[jax.Array, jax.Array]:
    """sample_random_points_from_errors(gt, pred, num_pt=1) for bool [N, H, W] masks.

    One pixel uniform over the false negatives (label 1) and false positives (label 0) together. A prediction
    equal to the GT gives a negative click uniform over the background; when that is empty too (full GT and
    full prediction) the reference's argmax over all-zero noise returns pixel 0, i.e. (0, 0) with label 0.
    The reference takes the argmax of uniform noise over the region; picking the k-th region pixel with k uniform
    in [0, count) has the same distribution, without float32 ties that favour earlier pixels.
    """
    n, h, w = gt.shape
    fn = gt & ~pred
    all_correct = jnp.all(gt == pred, axis=(1, 2), keepdims=True)
    fp = ~gt & (pred | all_correct)
    rank = jnp.cumsum((fn | fp).reshape(n, h * w), axis=1, dtype=jnp.int32)
    k = jax.random.randint(key, (n,), 0, jnp.maximum(rank[:, -1], 1))
    idx = jnp.argmax(rank > k[:, None], axis=1)  # the (k+1)-th region pixel; 0 when the region is empty
    labels = jnp.take_along_axis(fn.reshape(n, h * w), idx[:, None], axis=1).astype(jnp.int32)
    coords = jnp.stack([idx % w, idx // w], axis=-1).astype(jnp.float32)
    return coords[:, None], labels


def uniform_click(key: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The initial click: get_next_point(gt, None, "uniform"). A positive click uniform over the GT [N, H, W];
    an empty GT equals its (empty) prediction, so it gets a negative click uniform over the whole image.
    Returns coords [N, 1, 2] float32 (x, y) and labels [N, 1] int32."""
    mask = mask.astype(bool)
    return _sample_from_errors(key, mask, jnp.zeros_like(mask))


def correction_click(
    key: jax.Array, pred: jax.Array, gt: jax.Array, from_gt: jax.Array | bool = False
) -> tuple[jax.Array, jax.Array]:
    """One correction click (_iter_correct_pt_sampling, "uniform"): uniform over the errors of `pred` [N, H, W]
    (logits, thresholded at > 0 like `high_res_masks > 0`, or bool) against `gt`, labelled 1 on false negatives
    and 0 on false positives. Where `from_gt` (scalar or [N]) is set the prediction is taken as empty, so the
    click comes from the GT (the reference's `pred_masks=None`)."""
    pred = pred if pred.dtype == jnp.bool_ else pred > 0
    pred = pred & ~jnp.asarray(from_gt, bool).reshape(-1, 1, 1)
    return _sample_from_errors(key, gt.astype(bool), pred)


def noisy_box(
    key: jax.Array, mask: jax.Array, noise: float = 0.1, noise_bound: float = 20.0
) -> tuple[jax.Array, jax.Array]:
    """sample_box_points: the tight box of each mask [N, H, W] (mask_to_box), each coordinate moved by
    U(-1, 1) * min(noise * box w or h, noise_bound), then clamped to [0, W-1] x [0, H-1].

    As in the reference: an empty mask has the box (W, H, -1, -1), whose negative size still gives noise of
    magnitude noise * (size + 1) before the clamp; with noise == 0 nothing is added and nothing is clamped.
    Returns coords [N, 2, 2] float32 (top-left, bottom-right; x, y) and labels [N, 2] int32 = BOX_CORNER_LABELS.
    """
    n, h, w = mask.shape
    mask = mask.astype(bool)

    def span(hit: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
        idx = jnp.arange(size)
        return jnp.min(jnp.where(hit, idx, size), axis=1), jnp.max(jnp.where(hit, idx, -1), axis=1)

    (x0, x1), (y0, y1) = span(mask.any(axis=1), w), span(mask.any(axis=2), h)
    box = jnp.stack([x0, y0, x1, y1], axis=-1).astype(jnp.float32)  # [N, 4]
    if noise > 0.0:
        max_dx = jnp.minimum((box[:, 2] - box[:, 0]) * noise, noise_bound)
        max_dy = jnp.minimum((box[:, 3] - box[:, 1]) * noise, noise_bound)
        box_noise = 2 * jax.random.uniform(key, (n, 4)) - 1
        box = box + box_noise * jnp.stack([max_dx, max_dy, max_dx, max_dy], axis=-1)
        box = jnp.clip(box, 0.0, jnp.array([w - 1, h - 1, w - 1, h - 1], jnp.float32))
    labels = jnp.broadcast_to(jnp.array(BOX_CORNER_LABELS, jnp.int32), (n, 2))
    return box.reshape(n, 2, 2), labels


# ------------------------------------------------------------------------------------------ host-side draw
@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """SAM2Train's training prompt settings; the defaults are sam2.1_hiera_b+_MOSE_finetune.yaml's."""

    prob_point: float = 0.5  # prob_to_use_pt_input_for_train
    prob_box: float = 0.5  # prob_to_use_box_input_for_train, per initial conditioning frame given points
    prob_from_gt: float = 0.1  # prob_to_sample_from_gt_for_train, per correction click
    num_init_cond_frames: int = 2  # num_init_cond_frames_for_train (frame 0 always included)
    rand_init_cond_frames: bool = True  # draw 1..num_init_cond_frames
    num_frames_to_correct: int = 2  # num_frames_to_correct_for_train (the init cond frames always included)
    rand_frames_to_correct: bool = True  # draw #init cond..num_frames_to_correct
    num_correction_pts: int = 7  # num_correction_pt_per_frame
    add_all_frames_to_correct_as_cond: bool = True
    # RobotSeg's robot-prompt probability: P(robot) first, then P(mask) = 1 - P(robot) - P(point), the rest point
    # input. None: SAM 2's draw, which has no robot mode.
    prob_robot: float | None = None

    def __post_init__(self):
        # SAM2Train.__init__ asserts this whenever point input is possible.
        if self.num_frames_to_correct < self.num_init_cond_frames:
            raise ValueError("num_frames_to_correct must be >= num_init_cond_frames")


SAM21_MOSE_FINETUNE = PromptConfig()
# robotseg-train.yaml: P(robot) 0.4, P(mask) 0.2, P(point) 0.4; 3 correction clicks on frame 0 only.
ROBOTSEG = PromptConfig(
    prob_point=0.4,
    prob_robot=0.4,
    num_init_cond_frames=1,
    rand_init_cond_frames=False,
    num_frames_to_correct=1,
    rand_frames_to_correct=False,
    num_correction_pts=3,
)


@dataclasses.dataclass(frozen=True)
class PromptPlan:
    """One batch's static prompt structure (hashable, a `jit` static argument). Frame tuples are in processing
    order (forward_tracking: the initial conditioning frames as drawn, then the others ascending).

    mode: "robot": no clicks or masks, the category on every stage. "mask": each initial conditioning frame's
    GT mask is its output (mask-as-output). "point": a noisy box on `box_frames`, one uniform click on the other
    initial conditioning frames, then `num_correction_pts` correction clicks on each of `correct_frames`.
    `cond_frames` are the frames whose outputs are stored as conditioning memory.
    """

    num_frames: int
    mode: Mode
    init_cond_frames: tuple[int, ...]
    box_frames: tuple[int, ...]
    correct_frames: tuple[int, ...]
    num_correction_pts: int
    cond_frames: tuple[int, ...]

    @property
    def processing_order(self) -> tuple[int, ...]:
        rest = tuple(t for t in range(self.num_frames) if t not in self.init_cond_frames)
        return self.init_cond_frames + rest

    def num_points(self, frame: int, step: int = 0) -> int:
        """Clicks fed to the SAM heads on `frame` at correction step `step` (0: the first pass), a box counting
        as 2. With `modeling.sam2.use_multimask` this gives SAM 2's multimask rule (_use_multimask: 3 masks for 0 or 1
        clicks, 1 mask for a box or more clicks)."""
        if step > (self.num_correction_pts if frame in self.correct_frames else 0):
            raise ValueError(f"frame {frame} has no correction step {step}")
        return {"none": 0, "click": 1, "box": 2}[self.first_prompt(frame)] + step

    def first_prompt(self, frame: int) -> FirstPrompt:
        """The prompt of `frame`'s first SAM pass: a noisy box or one uniform click on the initial conditioning
        frames in point mode, nothing otherwise."""
        if self.mode != "point" or frame not in self.init_cond_frames:
            return "none"
        return "box" if frame in self.box_frames else "click"


def draw_prompts(rng: np.random.Generator, config: PromptConfig, num_frames: int) -> tuple[PromptPlan, np.ndarray]:
    """Draws one batch's prompt structure, consuming `rng` exactly as the reference does per batch:
    SAM2Train.prepare_prompt_inputs (the mode, the numbers of init cond / corrected frames, the extra init cond
    frames, one box draw per init cond frame, the extra corrected frames), then one from-GT draw per correction
    click, frame by frame in processing order (_iter_correct_pt_sampling, during forward_tracking).

    Returns the plan and from_gt [len(plan.correct_frames), plan.num_correction_pts] bool, for `correction_click`.
    """
    num_init, num_correct = config.num_init_cond_frames, config.num_frames_to_correct
    if num_frames == 1:  # SAM2Train: images always use points, with one init cond frame to correct
        num_init = num_correct = 1
    p = rng.random()
    if config.prob_robot is None:
        mode: Mode = "point" if num_frames == 1 or p < config.prob_point else "mask"
    elif p < config.prob_robot:
        mode = "robot"
    elif p < config.prob_robot + (1 - config.prob_robot - config.prob_point) and num_frames > 1:
        mode = "mask"  # RobotSeg: on images (1 frame) the mask band becomes point input
    else:
        mode = "point"
    if config.rand_init_cond_frames and num_init > 1:
        num_init = int(rng.integers(1, num_init, endpoint=True))
    if mode == "point" and config.rand_frames_to_correct and num_correct > num_init:
        num_correct = int(rng.integers(num_init, num_correct, endpoint=True))
    init = [0]
    if num_init > 1:
        init += rng.choice(range(1, num_frames), num_init - 1, replace=False).tolist()
    box = [t for t in init if mode == "point" and rng.random() < config.prob_box]
    rest = [t for t in range(num_frames) if t not in init]
    correct = []
    if mode == "point":
        extra = rng.choice(rest, num_correct - num_init, replace=False).tolist() if num_correct > num_init else []
        correct = [t for t in init + rest if t in init + extra]
    # SAM2Train draws from-GT flags only when the probability is positive.
    from_gt = np.array(
        [[config.prob_from_gt > 0 and rng.random() < config.prob_from_gt for _ in range(config.num_correction_pts)]
         for _ in correct],
        dtype=bool,
    ).reshape(len(correct), config.num_correction_pts)
    cond = init + [t for t in correct if t not in init] if config.add_all_frames_to_correct_as_cond else init
    plan = PromptPlan(
        num_frames=num_frames,
        mode=mode,
        init_cond_frames=tuple(init),
        box_frames=tuple(box),
        correct_frames=tuple(correct),
        num_correction_pts=config.num_correction_pts,
        cond_frames=tuple(cond),
    )
    return plan, from_gt


def initial_points(key: jax.Array, first_prompt: FirstPrompt, gt: jax.Array) -> tuple[jax.Array, jax.Array] | None:
    """The clicks of a first SAM pass (`PromptPlan.first_prompt`) on GT masks [N, H, W]: a noisy box, one uniform
    click, or None."""
    if first_prompt == "none":
        return None
    return noisy_box(key, gt) if first_prompt == "box" else uniform_click(key, gt)
