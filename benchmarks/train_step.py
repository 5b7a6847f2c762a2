"""Train-step time of the RobotSeg LET step with the tracked stages scanned vs unrolled, side by side on this
backend (StepConfig.unroll_stages: XLA:CPU runs loop bodies much slower than straight-line code, accelerators
need not), plus the compile time of each.

    python -m benchmarks.train_step [--image-size 128] [--batch 2] [--frames 7] [--steps 3] [--dtype float32]

Random weights and a synthetic batch (a box per frame) in robot-prompt mode: the step's cost does not depend on
the values. Prints seconds per step, clips per second and the unrolled/scanned ratio.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.checkpoints.convert import initial_params
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.robotseg import build_model
from robotseg_jax.training.optimizer import OptimizerConfig, make_optimizer
from robotseg_jax.training.prompts import ROBOTSEG, draw_prompts
from robotseg_jax.training.train_step import StepConfig, init_train_state, train_step


def robot_mode_plan(num_frames: int):
    rng = np.random.default_rng(0)
    while True:
        plan, from_gt = draw_prompts(rng, ROBOTSEG, num_frames)
        if plan.mode == "robot":
            return plan, jnp.asarray(from_gt)


def synthetic_batch(batch: int, num_frames: int, size: int) -> dict:
    rng = np.random.default_rng(1)
    masks = np.zeros((batch, num_frames, size, size), bool)
    for t in range(num_frames):
        masks[:, t, size // 4 + t : 3 * size // 4, size // 3 : 2 * size // 3] = True
    return {
        "images": jnp.asarray(rng.normal(size=(batch, num_frames, size, size, 3)), jnp.float32),
        "masks": jnp.asarray(masks),
        "category": jnp.full((batch,), 2, jnp.int32),
    }


def time_variant(model, params, batch, plan, from_gt, step_config: StepConfig, steps: int) -> tuple[float, float]:
    """(compile seconds, seconds per step) of one variant."""
    optimizer = make_optimizer(params, OptimizerConfig(total_steps=1000))
    # The step donates its state: give each variant its own copy of the params.
    state = init_train_state(jax.tree.map(jnp.copy, params), optimizer, seed=0)
    step = jax.jit(
        functools.partial(train_step, model=model, optimizer=optimizer, config=step_config, plan=plan),
        donate_argnums=0,
    )
    start = time.perf_counter()
    compiled = step.lower(state, batch, from_gt).compile()
    compile_seconds = time.perf_counter() - start
    state, metrics = compiled(state, batch, from_gt)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, from_gt)
    jax.block_until_ready(metrics)
    return compile_seconds, (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    config = get_model_config("robotseg_hiera_t", image_size=args.image_size)
    model = build_model(config)
    params = initial_params(config, None, seed=0)
    plan, from_gt = robot_mode_plan(args.frames)
    batch = synthetic_batch(args.batch, args.frames, args.image_size)
    print(f"{jax.devices()[0].device_kind} x{jax.device_count()}: robotseg_hiera_t at {args.image_size} px, "
          f"batch {args.batch} x {args.frames} frames, {args.dtype}")
    results = {}
    for name, unroll in (("scanned", False), ("unrolled", True)):
        step_config = StepConfig(compute_dtype=args.dtype, unroll_stages=unroll)
        compile_seconds, seconds = time_variant(model, params, batch, plan, from_gt, step_config, args.steps)
        results[name] = seconds
        print(f"{name:9s} compile {compile_seconds:6.1f} s   step {seconds:6.3f} s   {args.batch / seconds:6.2f} clips/s")
    print(f"unrolled / scanned step time: {results['unrolled'] / results['scanned']:.2f}")


if __name__ == "__main__":
    main()
