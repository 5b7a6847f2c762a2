"""One optimisation step: the clip forward (clip_forward.py), the SAM 2 or LET loss, gradients, AdamW.

`TrainState` is a pytree (params, optimizer state, step, rng, skip counter) that the step consumes and returns,
so `jax.jit(..., donate_argnums=0)` updates it in place on the devices. The batch's prompt structure (a
`PromptPlan`, drawn on the host by `prompts.draw_prompts`) is a static argument: one compiled program per plan.

Mixed precision: parameters stay float32 (the master copy the optimizer updates); with `compute_dtype` bfloat16
the forward pass runs on a bfloat16 cast of them and of the images (torch autocast's role), losses in float32.
A step whose loss or gradients are not finite changes nothing but the step counter and `skipped_steps`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax

from robotseg_jax.modeling.common import cast_floating
from robotseg_jax.modeling.edges import laplacian_structure_target
from robotseg_jax.modeling.sam2 import SAM2Model
from robotseg_jax.training.clip_forward import StageOutputs, track_clip
from robotseg_jax.training.losses import (
    LETLossConfig,
    LETStage,
    SAM2LossConfig,
    StepOutputs,
    let_loss,
    sam2_loss,
)
from robotseg_jax.training.prompts import PromptPlan


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 []
    params: dict
    opt_state: optax.OptState
    rng: jax.Array  # the run's base key; step k uses fold_in(rng, k)
    skipped_steps: jax.Array  # int32 [], updates skipped for a non-finite loss or gradient


def init_train_state(params: dict, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        skipped_steps=jnp.zeros((), jnp.int32),
    )


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the step computes besides the model: the loss ("let": RobotSeg's, "sam2": SAM 2's multistep loss)
    and the compute dtype of the forward pass."""

    loss: Literal["let", "sam2"] = "let"
    let: LETLossConfig = LETLossConfig()
    sam2: SAM2LossConfig = SAM2LossConfig()
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # Run every stage of a clip as its own copy instead of scanning the plain tracked ones: XLA:CPU runs while
    # loops about 5x slower than the unrolled program (measured: 7-frame clip at 128 px, 10 s vs 2.6 s per step),
    # at twice the compile time, and an unrolled stage attends only to the memory it has (half the memory
    # attention of an 8-frame clip). Scanning suits GPUs and TPUs; `train.py` unrolls on CPU unless the config
    # says otherwise.
    unroll_stages: bool = False


def clip_loss(
    params: dict,
    model: SAM2Model,
    batch: dict,
    plan: PromptPlan,
    from_gt: jax.Array,
    rng: jax.Array,
    config: StepConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The weighted loss of a batch of clips and its terms (summed over stages, as the reference logs them).

    batch: "images" [B,T,S,S,3] float, "masks" [B,T,S,S] bool (GT on the first frame, pseudo masks between for
    LET), "category" [B] int32. Every clip holds one object, so the batch size is the global object count that
    every per-object term is divided by.
    """
    dtype = jnp.dtype(config.compute_dtype)
    compute_params = cast_floating(params, dtype)
    stages: list[StageOutputs] = track_clip(
        model, compute_params, batch["images"].astype(dtype), batch["masks"], batch["category"], plan, from_gt, rng,
        unroll=config.unroll_stages,
    )
    stages = jax.tree.map(lambda x: x.astype(jnp.float32), stages)
    targets = batch["masks"].swapaxes(0, 1)  # [T, B, S, S]
    num_objects = jnp.asarray(max(targets.shape[1], 1), jnp.float32)
    if config.loss == "sam2":
        frames = [[_step_outputs(h) for h in stage.steps] for stage in stages]
        losses = sam2_loss(frames, targets, num_objects, config.sam2)
    else:
        let_stages = [
            LETStage(tuple(_step_outputs(h) for h in s.steps), s.backbone_features, s.structure_maps) for s in stages
        ]
        structure_target = laplacian_structure_target(targets[-1]) if len(stages) > 1 else None
        # The reference normalises LET's mean-over-objects terms by the objects per GPU, which is one (one clip,
        # one object per GPU in video batches): the mean over the clips is that value on any number of devices.
        losses = let_loss(
            let_stages, targets, structure_target, num_objects, config.let, mean_term_objects=jnp.float32(1.0)
        )
    return losses["core_loss"], losses


def _step_outputs(heads) -> StepOutputs:
    return StepOutputs(heads.high_res_multimasks, heads.ious, heads.object_score_logits)


def train_step(
    state: TrainState,
    batch: dict,
    from_gt: jax.Array,
    *,
    plan: PromptPlan,
    model: SAM2Model,
    optimizer: optax.GradientTransformation,
    config: StepConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW step on a batch; returns the new state and scalar metrics (loss terms, grad norm, skipped)."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grad_fn = jax.value_and_grad(clip_loss, has_aux=True)
    (loss, losses), grads = grad_fn(state.params, model, batch, plan, from_gt, rng, config)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(params, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # A non-finite step keeps the old params and optimizer state (not even Adam's moments see it). A `cond`, not a
    # `where` over the new and old trees: that select is one more pass over params and both moments (117 M
    # floats for Hiera-T, 0.1 s per step on a 2-core CPU) in every step, to guard against a rare one.
    params, opt_state = jax.lax.cond(
        finite, update, lambda params, opt_state, grads: (params, opt_state), state.params, state.opt_state, grads
    )
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        rng=state.rng,
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
    )
    metrics = {**losses, "grad_norm": grad_norm, "skipped": (~finite).astype(jnp.float32)}
    return new_state, metrics
