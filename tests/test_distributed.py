"""Finding a multi-process launch in the environment, the single-process behaviour of the host helpers, the
lagged metrics fetch with its divergence stop, and evaluation results gathered from several processes.

Several real processes are in test_multiprocess.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import config_dict

from configs import robotseg_hiera_t
from robotseg_jax import distributed
from robotseg_jax.errors import ConfigValueError
from robotseg_jax.evaluation.report import EvalResults
from robotseg_jax.evaluation.scores import Score
from robotseg_jax.training.step_metrics import DivergedError, StepMetrics


def settings(**values) -> config_dict.ConfigDict:
    section = robotseg_hiera_t.get_config().distributed
    for key, value in values.items():
        setattr(section, key, value)
    return section


def launch(environ=None, workers=0, **values):
    return distributed.find_launch(settings(**values), environ or {}, tpu_workers=lambda: workers)


def test_a_single_process_is_left_alone():
    assert launch() is None
    assert launch({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert launch(workers=1) is None
    assert launch({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}) is None


def test_explicit_launches_come_from_the_environment_or_the_config():
    environ = {"JAX_COORDINATOR_ADDRESS": "host0:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert launch(environ) == distributed.Launch("explicit", "host0:1234", 2, 1)
    assert launch(environ, process_id=0) == distributed.Launch("explicit", "host0:1234", 2, 0)  # the config wins
    assert launch(coordinator_address="h:9", num_processes=4, process_id=3) == distributed.Launch("explicit", "h:9", 4, 3)


def test_clusters_are_found_and_left_to_jax():
    assert launch({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}) == distributed.Launch("slurm")
    assert launch(workers=4) == distributed.Launch("tpu pod")
    assert launch(mode="on") == distributed.Launch("jax auto-detection")
    assert launch({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, workers=4, mode="off") is None


def test_bad_launch_settings_are_config_errors():
    with pytest.raises(ConfigValueError, match="needs all of distributed.coordinator_address"):
        launch({"JAX_COORDINATOR_ADDRESS": "h:1"})
    with pytest.raises(ConfigValueError, match="process_id=2 must lie in"):
        launch(coordinator_address="h:1", num_processes=2, process_id=2)
    with pytest.raises(ConfigValueError, match="must be an integer"):
        launch({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"})
    with pytest.raises(ConfigValueError, match="must be one of auto, on, off"):
        launch(mode="yes")


def test_tpu_workers_are_counted_from_gke_hostnames(monkeypatch):
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    assert distributed.tpu_worker_count() == 4


def test_host_helpers_in_a_single_process():
    tree = {"a": jnp.arange(3.0), "b": {"c": np.ones(2, np.int32)}}
    copy = distributed.host_copy(tree)
    assert isinstance(copy["a"], np.ndarray) and copy["a"].tolist() == [0.0, 1.0, 2.0]
    assert distributed.allgather_json({"x": [1, 2]}) == [{"x": [1, 2]}]
    assert jax.process_count() == 1


def _metrics(skipped: bool) -> dict:
    return {"core_loss": jnp.float32(1.0), "skipped": jnp.bool_(skipped)}


def test_metrics_arrive_lag_steps_late_and_all_arrive_when_taken():
    """A skipped step stops a run that allows none when its metrics arrive: at once without a lag, one step later
    (after the next step was dispatched) with a lag of 1."""
    at_once = StepMetrics(lag=0, max_consecutive_skips=1)
    with pytest.raises(DivergedError, match=r"\(step 1\)"):
        at_once.add(1, _metrics(True))
    late = StepMetrics(lag=1, max_consecutive_skips=1)
    late.add(1, _metrics(True))
    with pytest.raises(DivergedError, match=r"\(step 1\)"):
        late.add(2, _metrics(False))

    log = StepMetrics(lag=1, max_consecutive_skips=10)
    for step in (1, 2, 3):
        log.add(step, _metrics(False))
    taken = log.take_all()
    assert len(taken) == 3 and all(isinstance(m["core_loss"], np.ndarray) for m in taken)
    assert log.take_all() == []


def test_the_divergence_stop_counts_consecutive_skips():
    log = StepMetrics(lag=1, max_consecutive_skips=2)
    log.add(1, _metrics(True))
    log.add(2, _metrics(False))  # resets the count
    log.add(3, _metrics(True))
    log.add(4, _metrics(True))  # fetches step 3: one skip in a row
    with pytest.raises(DivergedError, match=r"2 consecutive steps .* \(step 4\)"):
        log.take_all()
    with pytest.raises(ConfigValueError, match="metrics_lag_steps=-1"):
        StepMetrics(lag=-1, max_consecutive_skips=2)


def test_results_of_disjoint_processes_merge_into_the_one_process_results():
    videos = ["v0", "v1", "v2", "v3"]
    whole = EvalResults(["AU"], ["robot"])
    parts = [EvalResults(["AU"], ["robot"]), EvalResults(["AU"], ["robot"])]
    for i, video in enumerate(videos):
        score = Score(50.0 + i, 60.0 + 2 * i)
        for results in (whole, parts[i % 2]):
            results.add("AU", "robot", video, "franka" if i < 2 else "kuka", score)
    whole.skip("v4", "robot", "no GT masks for this category")
    parts[0].skip("v4", "robot", "no GT masks for this category")
    roundtrip = [EvalResults.from_json(p.to_json()) for p in parts]
    merged = EvalResults.merged(roundtrip, videos + ["v4"])
    assert merged == whole
    assert list(merged.scores[("AU", "robot")]) == videos
    assert merged.groups("AU", "robot") == whole.groups("AU", "robot")
