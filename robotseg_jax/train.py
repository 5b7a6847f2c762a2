"""Train RobotSeg (LET) or fine-tune SAM 2.1 on one CPU, one GPU or a TPU pod.

    python -m robotseg_jax.train --config configs/quickstart.py --workdir runs/quickstart
    python -m robotseg_jax.train --config configs/robotseg_hiera_t.py --workdir runs/robotseg \
        --config.init_checkpoint=sam2.1_hiera_tiny.pt --config.data.data_dir=/data/tfds

mesh -> input -> model/optimizer -> shardings -> jitted step -> checkpoints -> evals. A restart with the same
workdir resumes from the latest checkpoint (state and data iterator); SIGTERM saves and exits cleanly. Writes
TensorBoard events and `metrics` logs to the workdir, validation PNGs under `<workdir>/eval/<step>`, and with
`final_eval` also `<workdir>/results.json`, `<workdir>/overlay.gif` and the trained params as an orbax checkpoint
`<workdir>/params` that `evaluate`, `predict` and `convert --to-torch` load. `<workdir>/train_finished.json`
marks a run that reached its last step (a preempted run exits with status 0 too).

On a pod or a multi-node GPU job every host runs this same command (launch/): JAX's multi-process runtime starts
when the environment has one (robotseg_jax/distributed.py), each process loads its part of every global batch, and
the step runs on the mesh of all processes' devices. Process 0 writes the summaries, images and results; all
processes take part in checkpointing and validation. SIGTERM on any process makes all of them save the same step
(JAX's preemption sync point) and exit.
"""

from __future__ import annotations

import json
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from clu import metric_writers, periodic_actions
from ml_collections import config_dict, config_flags

from robotseg_jax import cli, distributed
from robotseg_jax.checkpoints.convert import initial_params, save_params
from robotseg_jax.config_sections import dataclass_from_config
from robotseg_jax.errors import ConfigValueError, make_output_dir
from robotseg_jax.inference.visualize import write_gif
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.robotseg import build_model
from robotseg_jax.training import inputs, sharding
from robotseg_jax.training.checkpointing import TrainCheckpoints
from robotseg_jax.training.losses import LETLossConfig, SAM2LossConfig
from robotseg_jax.training.optimizer import (
    OptimizerConfig,
    cosine_factor,
    make_optimizer,
)
from robotseg_jax.training.prompts import PromptConfig, draw_prompts
from robotseg_jax.training.step_metrics import StepMetrics
from robotseg_jax.training.train_step import StepConfig, init_train_state, train_step
from robotseg_jax.training.validation import Validator

config_flags.DEFINE_config_file("config", None, "an ml_collections config file (configs/*.py)", lock_config=True)
flags.DEFINE_string("workdir", None, "checkpoints, logs and results go here; rerunning resumes")
flags.mark_flags_as_required(["config", "workdir"])

FINISHED_FILE = "train_finished.json"


def train_and_evaluate(config: config_dict.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) training as configured; returns the final evaluation results (empty without one)."""
    workdir = os.path.abspath(make_output_dir(workdir, "--workdir"))
    config = _resolve_paths(config, workdir)
    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)

    # mesh -> input
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    if config.data.batch_size % mesh.size:
        raise ConfigValueError(
            f"data.batch_size={config.data.batch_size} must be a multiple of the {mesh.size} devices"
        )
    # The model and its starting params come before the data, so that an unknown model or a checkpoint that does
    # not fit fails before any data is rendered or built.
    model_overrides = {"image_size": config.image_size, **config.model_overrides}
    model_config = get_model_config(config.model, **model_overrides)
    model = build_model(model_config)
    checkpoints = TrainCheckpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints, config.async_checkpoints)
    param_shardings = lambda abstract: sharding.param_shardings(abstract, mesh, config.mesh.fsdp_rules)
    if checkpoints.latest_step() is None:
        params = initial_params(model_config, config.init_checkpoint, config.seed, shardings=param_shardings)
        params = sharding.shard_params(params, mesh, config.mesh.fsdp_rules)
    else:
        # A restart takes its params from the checkpoint: nothing is initialised or loaded (the init checkpoint need
        # not be there any more), only the shapes and shardings to restore into.
        abstract = jax.eval_shape(lambda: initial_params(model_config, None, config.seed))
        params = sharding.with_shardings(abstract, param_shardings)
    inputs.ensure_dataset(config.data, log=logging.info)
    train_iter, steps_per_epoch = inputs.make_iterator(config.data, config.image_size, config.seed)
    total_steps = config.total_steps or config.num_epochs * steps_per_epoch

    # optimizer, state placed on the mesh
    optimizer_config = dataclass_from_config(OptimizerConfig, config.optimizer, total_steps=total_steps)
    optimizer = make_optimizer(params, optimizer_config)
    state = sharding.init_sharded(lambda p: init_train_state(p, optimizer, config.seed), params, mesh)
    state_shardings = jax.tree.map(lambda leaf: leaf.sharding, state)
    step_config = _step_config(config)
    step_fn = jax.jit(
        lambda state, batch, from_gt, plan: train_step(
            state, batch, from_gt, plan=plan, model=model, optimizer=optimizer, config=step_config
        ),
        static_argnums=3,
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )

    restored = checkpoints.restore_latest(state, train_iter)
    if restored is not None:
        state = restored
        logging.info("resumed from step %d", int(state.step))
    first_step = int(state.step)

    validator = None
    if config.eval.every_steps != 0:
        validator = Validator(config.eval, config.model, model_overrides, config.seed)
    eval_every = config.eval.every_steps or steps_per_epoch
    final = None
    if config.final_eval.enabled:
        final = Validator(config.final_eval, config.model, model_overrides, config.seed)
    results: dict = {}
    if final is not None and config.final_eval.compare_untrained:
        results["untrained"] = _untrained_results(final, state, workdir, first_step)

    prompt_config = dataclass_from_config(PromptConfig, config.prompts)
    hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)]
    if config.profile_steps and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(num_profile_steps=config.profile_steps, logdir=workdir))
    # Several processes must stop at the same step: JAX's preemption notifier catches SIGTERM and
    # `reached_preemption` agrees on the step; a Python handler would take the signal from it.
    preempted = (lambda: False) if jax.distributed.is_initialized() else _sigterm_flag()
    checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
    logging.info("training %s from step %d to %d (%d steps per epoch)", config.model, first_step, total_steps,
                 steps_per_epoch)

    step_metrics = StepMetrics(config.metrics_lag_steps, config.max_consecutive_skips)
    compiled_steps: dict = {}  # (prompt plan, batch shape) -> the compiled step
    step = first_step
    while step < total_steps:
        batch = next(train_iter)
        # The prompt structure of step k is a function of (seed, k): a resumed run draws the same prompts.
        plan, from_gt = draw_prompts(np.random.default_rng([config.seed, step]), prompt_config,
                                     batch["images"].shape[1])
        global_batch, from_gt = inputs.to_global(batch, mesh), jnp.asarray(from_gt)
        key = (plan, global_batch["images"].shape)
        if key not in compiled_steps:
            compiled_steps[key] = step_fn.lower(state, global_batch, from_gt, plan).compile()
            # Processes finish compiling at different times (a persistent-cache hit on one, a miss on another);
            # the step's first collective should not be where they wait for each other.
            distributed.barrier("step compiled")
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
            state, metrics = compiled_steps[key](state, global_batch, from_gt)
        step += 1
        step_metrics.add(step, metrics)
        for hook in hooks:
            hook(step)
        if step % config.log_every_steps == 0 or step == total_steps:
            writer.write_scalars(step, _summarise(step_metrics.take_all(), state, optimizer_config))
        val_jf = None
        if validator is not None and (step % eval_every == 0 or step == total_steps):
            val_jf = _validate(validator, state, writer, workdir, step)
        stop = preempted() or checkpoints.reached_preemption(step)
        if stop or step % checkpoint_every == 0 or step == total_steps:
            checkpoints.save(step, state, train_iter, val_jf, force=stop)
        if stop:
            logging.warning("stopping at step %d on a preemption signal; rerun with the same workdir to resume", step)
            step_metrics.take_all()  # the divergence check of the steps not yet fetched
            checkpoints.wait()
            writer.flush()
            return results

    checkpoints.wait()
    if jax.process_index() == 0:  # launchers tell a finished run from a preempted one by this file
        with open(os.path.join(workdir, FINISHED_FILE), "w") as f:
            json.dump({"step": step}, f)
    if final is not None and step == total_steps:
        results["trained"] = _final_results(final, state, config, workdir)
        results["steps"] = total_steps
        results["seeds"] = _seeds(config)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "results.json"), "w") as f:
                json.dump(results, f, indent=2)
    writer.flush()
    checkpoints.close()
    return results


def _step_config(config: config_dict.ConfigDict) -> StepConfig:
    unroll = config.unroll_stages
    if unroll is None:
        unroll = jax.default_backend() == "cpu"
    return StepConfig(
        loss=config.loss,
        let=dataclass_from_config(LETLossConfig, config.let_loss),
        sam2=dataclass_from_config(SAM2LossConfig, config.sam2_loss),
        compute_dtype=config.compute_dtype,
        unroll_stages=unroll,
    )


def _resolve_paths(config: config_dict.ConfigDict, workdir: str) -> config_dict.ConfigDict:
    """Fills the paths a config leaves to the run: VRS-Sim renders and TFDS data under <workdir>/data, and the
    evaluation data dirs default to the training data's."""
    config = config_dict.ConfigDict(config.to_dict())  # an unlocked copy
    if config.data.get("sim") is not None:
        config.data.sim.out = config.data.sim.out or os.path.join(workdir, "data", "vrs_sim")
        config.data.data_dir = config.data.data_dir or os.path.join(workdir, "data", "tfds")
    for section in (config.eval, config.final_eval):
        if section.get("data_dir") is None:
            section.data_dir = config.data.data_dir
    return config


def _sigterm_flag():
    """A callable that says whether SIGTERM (TPU preemption, a scheduler's kill) has arrived."""
    received = []
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        received.append(signum)
        logging.warning("SIGTERM received: saving a checkpoint at the end of this step")
        if callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    return lambda: bool(received)


def _summarise(window: list[dict], state, optimizer_config: OptimizerConfig) -> dict[str, float]:
    """Mean of each metric over the steps since the last log, the skip counter and the base learning rate."""
    summary = {f"train/{k}": float(np.mean([m[k] for m in window])) for k in window[0]}
    summary["train/skipped_steps_total"] = int(state.skipped_steps)
    step = int(state.step)
    factor = cosine_factor(jnp.float32(step), optimizer_config.total_steps, optimizer_config.end_lr_ratio)
    summary["train/learning_rate"] = float(optimizer_config.base_lr * factor)
    return summary


def _validate(validator: Validator, state, writer, workdir: str, step: int) -> float:
    out_dir = os.path.join(workdir, "eval", str(step))
    metrics, _ = validator.run(state.params, out_dir)
    writer.write_scalars(step, {f"val/{k}": v for k, v in metrics.items()})
    if jax.process_index() == 0:
        writer.write_images(step, {"val/overlay": validator.overlay_frames(out_dir)})
    logging.info("step %d validation J&F %.2f", step, metrics["J&F"])
    return metrics["J&F"]


def _evaluation_record(validator: Validator, params, out_dir: str) -> dict:
    metrics, results = validator.run(params, out_dir)
    per_embodiment = {}
    for setting in validator.settings:
        for category in validator.categories:
            for group, (score, count) in results.groups(setting, category).items():
                per_embodiment[f"{setting}/{category}/{group}"] = {"J": score.j, "F": score.f, "J&F": score.jf,
                                                                   "videos": count}
    return {"J&F": metrics["J&F"], "scores": per_embodiment}


def _seeds(config: config_dict.ConfigDict) -> dict:
    """Every seed the run's numbers depend on: `seed` drives the params (without a checkpoint), the data order,
    augmentation and prompts, and the evaluation's RPG draws; `data.sim.seed` the rendered dataset."""
    seeds = {"seed": config.seed}
    if config.data.sim is not None:
        seeds["data.sim.seed"] = config.data.sim.seed
    return seeds


def _untrained_results(final: Validator, state, workdir: str, first_step: int) -> dict:
    """The final evaluation of the starting params, done once before training and kept for restarts."""
    path = os.path.join(workdir, "untrained_eval.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if first_step > 0:
        raise RuntimeError(f"resuming at step {first_step} without {path}: the untrained evaluation is lost")
    record = _evaluation_record(final, state.params, os.path.join(workdir, "eval", "untrained"))
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(record, f, indent=2)
    return record


def _final_results(final: Validator, state, config: config_dict.ConfigDict, workdir: str) -> dict:
    out_dir = os.path.join(workdir, "eval", "final")
    start = time.perf_counter()
    record = _evaluation_record(final, state.params, out_dir)
    record["seconds"] = time.perf_counter() - start
    params = distributed.host_copy(state.params)
    if jax.process_index() == 0:
        write_gif(final.overlay_frames(out_dir, max_frames=64), os.path.join(workdir, "overlay.gif"))
        save_params(os.path.join(workdir, "params"), params, config.model)
    return record


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = flags.FLAGS.config
    launch = distributed.initialize(config.distributed)
    if launch is not None:
        logging.info("process %d of %d (%s launch), %d of %d devices here", jax.process_index(),
                     jax.process_count(), launch.source, jax.local_device_count(), jax.device_count())
    results = train_and_evaluate(config, flags.FLAGS.workdir)
    if results:  # the J&F of each evaluation, then the rest (steps, seeds) as results.json has it
        print(json.dumps({k: v["J&F"] if k in ("untrained", "trained") else v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    cli.run(main, absl_flags=True)  # user errors: one message, exit status 2 (ROBOTSEG_TRACEBACK=1: traceback)
