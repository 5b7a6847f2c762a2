"""Training end to end on a tiny VRS-Sim: the CLI with config overrides, a run resumed after SIGTERM repeating the
uninterrupted run's losses, params and seeded evaluation, a non-finite batch skipped, SAM 2's fine-tuning step, and
the paper config running one step at a reduced size.

The loop's tests use configs/quickstart.py:tiny's slim trunk (its mechanics do not depend on the depth, and the
programs compile in half the time); the paper-config test keeps the full architecture. The sharded step is in
test_sharding.py (it needs its own process)."""

import functools
import json
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import quickstart, robotseg_hiera_t, sam2_1_hiera_t_finetune
from robotseg_jax.checkpoints.convert import initial_params
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.robotseg import build_model
from robotseg_jax.train import train_and_evaluate
from robotseg_jax.training.optimizer import OptimizerConfig, make_optimizer
from robotseg_jax.training.prompts import ROBOTSEG, PromptPlan, draw_prompts
from robotseg_jax.training.train_step import StepConfig, init_train_state, train_step
from tests.train_runs import REPO, TINY, checkpointed_params, logged, train_command

SIZE = 64
STEPS = 4
# configs/quickstart.py:tiny's trunk (4 Hiera blocks, one global) and memory-attention MLP.
TINY_MODEL = quickstart.get_config("tiny").model_overrides.to_dict()
# Each test here takes several GB of RAM: under xdist one worker runs them in sequence (pyproject's loadgroup).
pytestmark = pytest.mark.xdist_group("training")


def _tiny_run(sim_data, cache) -> list[str]:
    """configs/quickstart.py:tiny for 4 steps on the shared tiny VRS-Sim, then its final evaluation (AU, whole
    robot) on one of the training videos."""
    return [
        f"--config.total_steps={STEPS}",
        f"--config.data.data_dir={sim_data.data_dir}",
        f"--config.data.sim.out={sim_data.sim.out}",
        "--config.data.batch_size=2",
        "--config.final_eval.enabled=True",
        "--config.final_eval.split=train",
        "--config.final_eval.max_videos=1",
        "--config.final_eval.compare_untrained=False",
        f"--config.compilation_cache_dir={cache}",
    ]


def test_a_run_resumed_after_sigterm_repeats_the_uninterrupted_run_and_its_evaluation(sim_data, tmp_path):
    """Through the CLI: an uninterrupted run; the same run stopped by SIGTERM after its first checkpoint, then
    rerun in its workdir. The resumed run logs the same losses, ends with the same params and scores the same J&F
    in its final evaluation (RPG's draws there are seeded by the run's seed); results.json records the seeds and
    the CLI prints the summary."""
    overrides, env = _tiny_run(sim_data, tmp_path / "jax_cache"), {**os.environ, "PYTHONPATH": REPO}
    full = tmp_path / "full"
    run = subprocess.run(train_command(full, overrides, TINY), cwd=REPO, env=env, capture_output=True)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    expected = logged(full)
    assert sorted(expected) == list(range(1, STEPS + 1))
    assert sorted(os.listdir(full / "checkpoints")) == ["3", "4"]  # keep_checkpoints=2
    expected_results = _results(full)
    assert expected_results["trained"]["scores"]  # a score was computed
    assert expected_results["seeds"] == {"seed": 0, "data.sim.seed": 0}
    printed = json.loads(run.stdout.decode()[run.stdout.decode().index("{"):])
    assert printed == {"trained": expected_results["trained"]["J&F"], "steps": STEPS, "seeds": expected_results["seeds"]}

    interrupted = tmp_path / "interrupted"
    command = train_command(interrupted, overrides, TINY)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (interrupted / "checkpoints" / "1").is_dir() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr.decode()[-3000:]
    stopped_at = max(int(s) for s in os.listdir(interrupted / "checkpoints"))
    assert stopped_at < STEPS, "SIGTERM arrived too late to interrupt the run"
    assert b"preemption signal" in stderr
    assert not (interrupted / "results.json").exists()  # a preempted run does not evaluate

    resumed_run = subprocess.run(command, cwd=REPO, env=env, capture_output=True)
    assert resumed_run.returncode == 0, resumed_run.stderr.decode()[-3000:]
    assert f"resumed from step {stopped_at}".encode() in resumed_run.stderr
    resumed = logged(interrupted)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([resumed[s] for s in resumed], [expected[s] for s in resumed], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(checkpointed_params(interrupted, STEPS)),
                         jax.tree.leaves(checkpointed_params(full, STEPS))):
        np.testing.assert_array_equal(got, want)
    results = _results(interrupted)
    assert {k: results["trained"][k] for k in ("J&F", "scores")} == {
        k: expected_results["trained"][k] for k in ("J&F", "scores")}  # all but the timing
    assert results["seeds"] == expected_results["seeds"]


def _results(workdir) -> dict:
    with open(workdir / "results.json") as f:
        return json.load(f)


def _tiny_step(model_name="robotseg_hiera_t", plan=None, step_config=None, num_frames=2, batch=1):
    config = get_model_config(model_name, image_size=SIZE, **TINY_MODEL)
    model = build_model(config)
    params = initial_params(config, None, seed=0)
    optimizer = make_optimizer(params, OptimizerConfig(total_steps=10))
    state = init_train_state(params, optimizer, seed=0)
    step = jax.jit(functools.partial(train_step, model=model, optimizer=optimizer, config=step_config or StepConfig()),
                   static_argnames="plan")
    if plan is None:
        plan, from_gt = draw_prompts(np.random.default_rng(0), ROBOTSEG, num_frames)
    else:
        from_gt = np.zeros((len(plan.correct_frames), plan.num_correction_pts), bool)
        from_gt[0, 0] = True
    images = jnp.asarray(np.random.default_rng(1).normal(size=(batch, plan.num_frames, SIZE, SIZE, 3)), jnp.float32)
    masks = np.zeros((batch, plan.num_frames, SIZE, SIZE), bool)
    masks[:, :, 16:48, 20:40] = True
    return step, state, {"images": images, "masks": jnp.asarray(masks), "category": jnp.full((batch,), 2)}, plan, from_gt


def test_sam2_finetuning_step_with_two_conditioning_frames_and_a_corrected_tracked_frame():
    """SAM 2's loss and prompts (the fine-tuning baseline): frames 0 and 2 prompted (a click, a box), then frame 1
    tracked from both and corrected with clicks, which makes it a conditioning frame too."""
    plan = PromptPlan(num_frames=3, mode="point", init_cond_frames=(0, 2), box_frames=(2,), correct_frames=(0, 1),
                      num_correction_pts=2, cond_frames=(0, 2, 1))
    step, state, batch, plan, from_gt = _tiny_step("sam2.1_hiera_t", plan, StepConfig(loss="sam2"), batch=2)
    new_state, metrics = step(state, batch, jnp.asarray(from_gt), plan=plan)
    assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["core_loss"]))
    assert float(metrics["loss_mask"]) > 0 and int(new_state.step) == 1


def test_non_finite_batch_is_skipped_without_touching_the_params():
    step, state, batch, plan, from_gt = _tiny_step()
    poisoned = {**batch, "images": batch["images"].at[0, 0, 5, 5, 0].set(jnp.nan)}
    after_nan, metrics = step(state, poisoned, jnp.asarray(from_gt), plan=plan)
    assert float(metrics["skipped"]) == 1.0 and int(after_nan.skipped_steps) == 1 and int(after_nan.step) == 1
    for new, old in zip(jax.tree.leaves((after_nan.params, after_nan.opt_state)), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    after_good, metrics = step(after_nan, batch, jnp.asarray(from_gt), plan=plan)
    assert float(metrics["skipped"]) == 0.0 and np.isfinite(float(metrics["core_loss"]))
    kernel = lambda s: np.asarray(s.params["obj_ptr_proj"]["layers_0"]["kernel"])
    assert not np.array_equal(kernel(after_good), kernel(state))
    assert int(after_good.skipped_steps) == 1


def test_paper_config_runs_one_step_at_reduced_size(sim_data, tmp_path):
    """configs/robotseg_hiera_t.py as it is (7-frame bidirectional clips, mixed image batches, LET, bf16, drop
    path), with only the size, the data and the batch sizes reduced."""
    config = robotseg_hiera_t.get_config()
    config.image_size = SIZE
    config.total_steps = 1
    config.data.name = "vrs_sim"
    config.data.data_dir = sim_data.data_dir
    config.data.batch_size = 1
    config.data.num_workers = 0
    config.data.images.name = "vrs_sim"
    config.data.images.data_dir = sim_data.data_dir
    config.data.images.batch_size = 2
    config.unroll_stages = False
    config.eval.every_steps = 0
    train_and_evaluate(config, str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["1"]
    assert np.isfinite(logged(tmp_path)[1]) and logged(tmp_path, "train/skipped")[1] == 0.0
    # The SAM 2.1 fine-tuning baseline's settings build the same way.
    baseline = sam2_1_hiera_t_finetune.get_config()
    assert baseline.loss == "sam2" and baseline.data.num_frames == 8
    assert quickstart.get_config().data.sim is not None
