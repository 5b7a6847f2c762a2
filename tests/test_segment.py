"""Dataset segmentation (`python -m robotseg_jax.segment`): batched results equal per-video predictor runs, a killed
job resumes without redoing finished videos, bad videos are recorded and skipped, every source kind reads."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from robotseg_jax.checkpoints import convert
from robotseg_jax.constants import CATEGORY_FOLDERS, ROBOT_CATEGORIES
from robotseg_jax.data import vrs_layout
from robotseg_jax.data.eval_videos import DatasetError
from robotseg_jax.data.sim import dataset as sim
from robotseg_jax.errors import ConfigValueError
from robotseg_jax.evaluation.guided_filter import refine_mask
from robotseg_jax.inference import SessionFrame, build_video_predictor
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.segmentation import job, outputs
from robotseg_jax.segmentation.engine import FrameMasks, Segmenter, VideoFinished
from robotseg_jax.segmentation.sources import open_source
from tests import train_runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 64
SEED = 3
# Good videos of different lengths (a 1-frame one among them), and bad ones with what their error names: one
# whose third JPEG is not a JPEG, one whose second frame has another size.
LENGTHS = {"sim_00000_panda": 6, "sim_00001_kuka_iiwa": 3, "sim_00002_xarm6": 6, "single_frame": 1}
BAD = {"corrupt": "00002.jpg", "resized": "frame 1 of"}
# One xdist worker runs this file, so that its model, predictor and job run are built once.
pytestmark = pytest.mark.xdist_group("segment")


@pytest.fixture(scope="module")
def videos_dir(tmp_path_factory) -> str:
    """A folder of JPEG-frame videos cut from VRS-Sim renders: the good videos of LENGTHS and the bad ones of BAD."""
    root = str(tmp_path_factory.mktemp("sim"))
    config = sim.GenerationConfig(num_frames=6, size=96, split_fractions={"test": 1.0}, holdout_embodiment=None)
    sim.generate(root, 3, config, log=lambda _: None)
    folder = str(tmp_path_factory.mktemp("videos"))
    source = lambda name: vrs_layout.video_image_dir(root, "test", name)
    for name, length in LENGTHS.items():
        os.makedirs(os.path.join(folder, name))
        origin = "sim_00000_panda" if name == "single_frame" else name
        for i in range(length):
            shutil.copy(os.path.join(source(origin), f"{i:05d}.jpg"), os.path.join(folder, name, f"{i:05d}.jpg"))
    for name in BAD:
        shutil.copytree(source("sim_00001_kuka_iiwa"), os.path.join(folder, name))
    with open(os.path.join(folder, "corrupt", "00002.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    resized = os.path.join(folder, "resized", "00001.jpg")
    Image.open(resized).resize((64, 64)).save(resized)
    return folder


@pytest.fixture(scope="module")
def params() -> dict:
    return convert.initial_params(get_model_config("robotseg_hiera_t", image_size=IMAGE_SIZE), None, seed=1)


@pytest.fixture(scope="module")
def checkpoint(params, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("ckpt"))
    convert.save_params(path, params, "robotseg_hiera_t")
    return path


@pytest.fixture(scope="module")
def predictor(params):
    return build_video_predictor("robotseg_hiera_t", params=params, image_size=IMAGE_SIZE, seed=SEED)


def _segment_config(checkpoint: str, source: str, out, **fields):
    """configs/segment.py, loaded by path as the CLI loads it, with test values."""
    spec = importlib.util.spec_from_file_location("segment_config", os.path.join(REPO, "configs", "segment.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(checkpoint=checkpoint, source=source, out=str(out), image_size=IMAGE_SIZE, seed=SEED,
                  progress=False, **fields)
    return config


def _reference_logits(predictor, path: str) -> dict[int, np.ndarray]:
    """Per-video, per-category RobotSegVideoPredictor runs (object id = the category's row, as the segmenter):
    frame -> logits [3, H, W] in category order."""
    per_frame: dict[int, list[np.ndarray]] = {}
    for row, category in enumerate(ROBOT_CATEGORIES):
        state = predictor.init_state(path)
        predictor.add_new_robot(state, 0, row, category)
        for frame_idx, obj_ids, logits in predictor.propagate_in_video(state, robot=category):
            per_frame.setdefault(frame_idx, []).append(logits[obj_ids.index(row), 0])
    return {t: np.stack(v) for t, v in per_frame.items()}


def _read_outputs(out: str, video: str, num_frames: int) -> np.ndarray:
    """bool [T, 3, H, W] from <out>/<video>/<000|001|002>/<frame>.png."""
    frames = []
    for t in range(num_frames):
        masks = []
        for category in ROBOT_CATEGORIES:
            with Image.open(os.path.join(out, video, CATEGORY_FOLDERS[category], f"{t:05d}.png")) as image:
                pixels = np.asarray(image)
            assert set(np.unique(pixels)) <= {0, 255}
            masks.append(pixels > 0)
        frames.append(np.stack(masks))
    return np.stack(frames)


def test_batched_videos_equal_per_video_predictor_runs(predictor, videos_dir):
    """3 good videos of 6, 3 and 6 frames and a 1-frame one through 2 slots (a slot is refilled mid-run, the last
    steps run padded): every frame's logits equal separate per-category predictor sessions. On a CPU they are
    bit-identical (frames and objects run one at a time inside the programs); accelerators batch them, where the
    float reduction order may differ, hence the 1e-5 bound."""
    videos = [v for v in open_source(videos_dir) if v.name not in BAD]
    segmenter = Segmenter(predictor, ROBOT_CATEGORIES, videos_per_step=2)
    programs_before = predictor.steps.cache_sizes()["track_objects"]
    got: dict[str, dict[int, np.ndarray]] = {}
    finished = {}
    for event in segmenter.run(videos):
        if isinstance(event, FrameMasks):
            assert event.frame_idx not in got.setdefault(event.video, {})
            got[event.video][event.frame_idx] = event.logits
        elif isinstance(event, VideoFinished):
            finished[event.video] = event.num_frames
        else:
            pytest.fail(f"unexpected failure: {event}")
    assert finished == LENGTHS
    # every tracked frame ran in one compiled program (2 videos x 3 objects, the full memory bank at this size)
    assert predictor.steps.cache_sizes()["track_objects"] - programs_before == 1
    worst = 0.0
    for video in videos:
        reference = _reference_logits(predictor, os.path.join(videos_dir, video.name))
        assert sorted(got[video.name]) == sorted(reference) == list(range(LENGTHS[video.name]))
        for t, logits in reference.items():
            np.testing.assert_array_equal(got[video.name][t] > 0, logits > 0, err_msg=f"{video.name} frame {t}")
            worst = max(worst, float(np.abs(got[video.name][t] - logits).max()))
    assert worst <= 1e-5, worst


def test_forgetting_old_outputs_keeps_a_long_propagation_equal(predictor, videos_dir):
    """Tracking on with only the outputs memory can still reach (the segmenter's way through long videos) gives the
    frames `propagate_in_video` gives with every output kept, and keeps at most 15 tracked outputs per object."""
    folder = os.path.join(videos_dir, "sim_00000_panda")
    frames = np.stack([np.asarray(Image.open(os.path.join(folder, f"{i:05d}.jpg"))) for i in range(6)])
    video = np.concatenate([frames, frames[::-1], frames, frames[::-1]])  # 24 frames, back and forth
    row = ROBOT_CATEGORIES.index("robot")
    full = predictor.init_state(video)
    predictor.add_new_robot(full, 0, row, "robot")
    expected = {t: logits for t, _, logits in predictor.propagate_in_video(full, robot="robot")}

    state = predictor.init_state(video)
    predictor.add_new_robot(state, 0, row, "robot")
    predictor.propagate_in_video_preflight(state)
    kept = []
    for t in range(1, len(video)):
        (logits,) = predictor.track_frames([SessionFrame(state, t, [row])])
        np.testing.assert_array_equal(logits, expected[t], err_msg=f"frame {t}")
        predictor.forget_old_outputs(state, t + 1)
        kept.append(len(state.objects[0].non_cond_outputs))
    assert max(kept) == predictor.config.max_obj_ptrs_in_encoder - 1 and len(full.objects[0].non_cond_outputs) == 23


@pytest.fixture(scope="module")
def job_run(predictor, checkpoint, videos_dir, tmp_path_factory) -> tuple[str, dict, object]:
    """One uninterrupted job over the videos folder (3 videos per step, overlays of the first 3 videos: corrupt
    and resized, which fail and get none, then sim_00000_panda; the masks also as TFDS): (out, summary, config)."""
    out = str(tmp_path_factory.mktemp("job"))
    config = _segment_config(checkpoint, videos_dir, out, videos_per_step=3, overlay_videos=3, tfds_output=True)
    return out, job.run_job(job.plan_from_config(config), predictor), config


def test_job_writes_vrs_layout_and_records_bad_videos(predictor, job_run, videos_dir):
    out, summary, config = job_run
    assert summary["segmented"] == len(LENGTHS) and summary["frames"] == sum(LENGTHS.values())
    assert {f["video"]: f["error"] for f in summary["failed"]}.keys() == BAD.keys()
    for failure in summary["failed"]:
        assert BAD[failure["video"]] in failure["error"], failure
    assert json.load(open(os.path.join(out, outputs.SUMMARY_FILE)))["segmented"] == len(LENGTHS)
    manifest = outputs.Manifest(out)
    statuses = {v: manifest.status(v) for v in [*LENGTHS, *BAD]}
    assert statuses == {**dict.fromkeys(LENGTHS, "done"), **dict.fromkeys(BAD, "failed")}
    assert not any(os.path.exists(os.path.join(out, v)) for v in BAD)
    assert not os.path.exists(os.path.join(out, outputs.PARTIAL_DIR))
    assert os.listdir(os.path.join(out, outputs.OVERLAY_DIR)) == ["sim_00000_panda.gif"]
    reference = _reference_logits(predictor, os.path.join(videos_dir, "sim_00001_kuka_iiwa"))
    expected = np.stack([reference[t] > 0 for t in range(3)])
    np.testing.assert_array_equal(_read_outputs(out, "sim_00001_kuka_iiwa", 3), expected)
    # the same masks as a TFDS dataset: every video done, none of the failed ones
    masks = tfds.core.read_only_builder.builder_from_files("robotseg_masks", data_dir=summary["tfds_data_dir"])
    examples = {e["name"].decode(): e for e in masks.as_data_source("train")}
    assert sorted(examples) == sorted(LENGTHS)
    kuka = examples["sim_00001_kuka_iiwa"]
    assert list(kuka["frame_ids"]) == [0, 1, 2]
    for c, category in enumerate(ROBOT_CATEGORIES):
        np.testing.assert_array_equal(np.stack([m[..., 0] > 0 for m in kuka["masks"][category]]), expected[:, c])

    # a rerun has nothing left to do (the failed videos are not retried unless asked)
    again = job.run_job(job.plan_from_config(config), predictor)
    assert again["segmented"] == 0 and again["skipped_already_done"] == len(LENGTHS) + len(BAD)


def test_killed_job_resumes_without_redoing_finished_videos(checkpoint, videos_dir, job_run, tmp_path):
    """A run on 2 devices (2 videos per step, one per device) is killed right after its first video is recorded;
    the rerun, by 2 processes, segments only the rest, and every output equals an uninterrupted 1-device run's."""
    out = str(tmp_path / "killed")
    command = [
        sys.executable, "-m", "robotseg_jax.segment", f"--config={os.path.join(REPO, 'configs', 'segment.py')}",
        f"--config.checkpoint={checkpoint}", f"--config.source={videos_dir}", f"--config.out={out}",
        f"--config.image_size={IMAGE_SIZE}", f"--config.seed={SEED}", "--config.progress=false",
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    two_devices = {**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"}
    manifest_dir = os.path.join(out, outputs.MANIFEST_DIR)
    first = subprocess.Popen(command + ["--config.videos_per_step=2"], env=two_devices, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and first.poll() is None:
        if '"done"' in _manifest_text(manifest_dir):
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert first.wait(60) == -signal.SIGKILL, first.stderr.read()[-3000:]
    done_before = [r["video"] for r in _manifest_records(manifest_dir) if r["status"] == "done"]
    assert 1 <= len(done_before) < len(LENGTHS), done_before  # killed mid-run

    port = train_runs.free_port()
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    reruns = [
        subprocess.Popen(command + ["--config.videos_per_step=1"], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         env={**env, "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
                              "JAX_PROCESS_ID": str(i)})
        for i, log in enumerate(logs)
    ]
    codes = [p.wait(timeout=600) for p in reruns]
    assert codes == [0, 0], "".join(log.read_text()[-3000:] for log in logs)
    records = _manifest_records(manifest_dir)
    done = [r["video"] for r in records if r["status"] == "done"]
    assert sorted(done) == sorted(LENGTHS)  # each video once: none of the finished ones was recomputed
    assert sorted(r["video"] for r in records if r["status"] == "failed") == sorted(BAD)
    assert sorted(os.listdir(manifest_dir)) == ["process_0.jsonl", "process_1.jsonl"]
    summary = json.load(open(os.path.join(out, outputs.SUMMARY_FILE)))
    assert summary["processes"] == 2 and summary["segmented"] == len(LENGTHS) - len(done_before)
    assert not os.path.exists(os.path.join(out, outputs.PARTIAL_DIR))

    uninterrupted = job_run[0]
    for video, length in LENGTHS.items():
        np.testing.assert_array_equal(_read_outputs(out, video, length), _read_outputs(uninterrupted, video, length))


def _manifest_text(folder: str) -> str:
    if not os.path.isdir(folder):
        return ""
    return "".join(open(os.path.join(folder, name)).read() for name in sorted(os.listdir(folder)))


def _manifest_records(folder: str) -> list[dict]:
    return [json.loads(line) for line in _manifest_text(folder).splitlines()]


class TinyRlds(tfds.core.GeneratorBasedBuilder):
    """An RLDS-style dataset: episodes of `steps` with an `observation/image` camera, as Open X-Embodiment."""

    VERSION = tfds.core.Version("1.0.0")
    LENGTHS = (3, 2, 0)  # the last episode has no steps

    def _info(self) -> tfds.core.DatasetInfo:
        step = {
            "observation": tfds.features.FeaturesDict(
                {"image": tfds.features.Image(shape=(72, 96, 3)), "state": tfds.features.Tensor(shape=(2,), dtype=np.float32)}
            ),
            "is_first": np.bool_,
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"steps": tfds.features.Dataset(step)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for e, length in enumerate(self.LENGTHS):
            steps = [
                {"observation": {"image": rng.integers(0, 256, (72, 96, 3), dtype=np.uint8), "state": np.zeros(2, np.float32)},
                 "is_first": i == 0}
                for i in range(length)
            ]
            yield f"episode_{e}", {"steps": steps}


def test_rlds_tfds_episodes_segment_end_to_end(predictor, checkpoint, tmp_path):
    data_dir = str(tmp_path / "tfds")
    builder = TinyRlds(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    out = str(tmp_path / "out")
    config = _segment_config(checkpoint, "tfds:tiny_rlds:train", out, data_dir=data_dir, categories="robot,gripper")
    summary = job.run_job(job.plan_from_config(config), predictor)
    assert summary["segmented"] == 2 and summary["frames"] == sum(TinyRlds.LENGTHS)
    source = builder.as_data_source(split="train")  # videos are named by their index in the split's order
    lengths = [len(episode["steps"]) for episode in source]
    name = lambda length: f"episode_{lengths.index(length):06d}"
    assert [(f["video"], "has no frames" in f["error"]) for f in summary["failed"]] == [(name(0), True)]
    frames = np.stack([np.asarray(step["observation"]["image"]) for step in source[lengths.index(3)]["steps"]])
    state = predictor.init_state(frames)
    predictor.add_new_robot(state, 0, ROBOT_CATEGORIES.index("gripper"), "gripper")
    for frame_idx, _, logits in predictor.propagate_in_video(state, robot="gripper"):
        with Image.open(os.path.join(out, name(3), "001", f"{frame_idx:05d}.png")) as image:
            np.testing.assert_array_equal(np.asarray(image) > 0, logits[0, 0] > 0)
    assert sorted(os.listdir(os.path.join(out, name(2)))) == ["001", "002"]  # robot, gripper only

    # with the guided filter: upstream's refinement of every frame's mask but the first
    filtered = str(tmp_path / "filtered")
    config = _segment_config(checkpoint, "tfds:tiny_rlds:train", filtered, data_dir=data_dir, categories="gripper",
                             guided_filter=True)
    job.run_job(job.plan_from_config(config), predictor)
    for t, frame in enumerate(frames):
        read = lambda root: np.asarray(Image.open(os.path.join(root, name(3), "001", f"{t:05d}.png"))) > 0
        np.testing.assert_array_equal(read(filtered), read(out) if t == 0 else refine_mask(read(out), frame))

    with pytest.raises(DatasetError, match="steps/observation/wrist"):
        job.plan_from_config(_segment_config(checkpoint, "tfds:tiny_rlds:train", out, data_dir=data_dir,
                                             image_key="wrist"))


def test_sources_and_config_errors(checkpoint, videos_dir, tmp_path):
    layout = tmp_path / "layout"
    for name in ("b", "a"):
        os.makedirs(vrs_layout.video_image_dir(str(layout), "val", name))
    assert [v.name for v in open_source(str(layout), split="val")] == ["a", "b"]
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "wave.mp4").write_bytes(b"")
    (tmp_path / "clips" / "notes.txt").write_text("not a video")
    assert [v.name for v in open_source(str(tmp_path / "clips"))] == ["wave"]
    with pytest.raises(DatasetError, match="no videos"):
        open_source(str(tmp_path / "layout" / "val"))
    with pytest.raises(DatasetError, match="no source folder"):
        open_source(str(tmp_path / "missing"))

    out = tmp_path / "out"
    with pytest.raises(ConfigValueError, match="RobotSeg model"):
        job.plan_from_config(_segment_config(checkpoint, videos_dir, out, model="sam2.1_hiera_t"))
    with pytest.raises(ConfigValueError, match="categories"):
        job.plan_from_config(_segment_config(checkpoint, videos_dir, out, categories="arm,wheel"))
    with pytest.raises(ConfigValueError, match="source is required"):
        job.plan_from_config(_segment_config(checkpoint, None, out))
