"""The VRS evaluation end to end on a tiny VRS-Sim test split: oracle masks through saving, scoring and
the report (no model); random-weight SAM 2.1 (1C, BB, image mode, TFDS input) and RobotSeg (AU, 1C) models through
the settings, a plumbing check whose scores mean nothing; and the errors a user can fix."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from robotseg_jax.checkpoints import convert
from robotseg_jax.constants import CATEGORY_FOLDERS
from robotseg_jax.data import eval_videos, tfds_builders
from robotseg_jax.data.sim import dataset as sim
from robotseg_jax.evaluation import from_config, report, runner, session
from robotseg_jax.evaluation.protocols import first_visible_frame
from robotseg_jax.modeling.config import get_model_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_VIDEOS, NUM_FRAMES, SIZE = 2, 4, 96
IMAGE_SIZE = 128
CATEGORIES = ["arm", "gripper", "robot"]
EMBODIMENTS = {"sim_00000_panda": "panda", "sim_00001_kuka_iiwa": "kuka_iiwa"}


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory) -> str:
    """Two VRS-Sim videos (panda, kuka_iiwa), all in the test split, every frame labelled."""
    root = str(tmp_path_factory.mktemp("vrs_sim"))
    config = sim.GenerationConfig(
        num_frames=NUM_FRAMES, size=SIZE, split_fractions={"test": 1.0}, holdout_embodiment=None
    )
    sim.generate(root, NUM_VIDEOS, config, log=lambda _: None)
    return root


@pytest.fixture(scope="module")
def robotseg_checkpoint(sam21_checkpoint, tmp_path_factory) -> str:
    """A RobotSeg orbax checkpoint started from the random SAM 2.1 one, as training starts (its new parts fresh)."""
    config = get_model_config("robotseg_hiera_t", image_size=IMAGE_SIZE)
    params = convert.init_from_sam2(convert.load_torch_state_dict(sam21_checkpoint), config, jax.random.key(0))
    path = str(tmp_path_factory.mktemp("robotseg_ckpt"))
    convert.save_params(path, params, config.name)
    return path


def _config(sim_root: str, checkpoint: str, out, **fields):
    """configs/eval_vrs.py, loaded by path as the CLI loads it, with test values."""
    spec = importlib.util.spec_from_file_location("eval_vrs", os.path.join(REPO_ROOT, "configs", "eval_vrs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.update(model="sam2.1_hiera_t", checkpoint=checkpoint, data=sim_root, image_size=IMAGE_SIZE, out=str(out))
    config.update(progress=False)
    config.update(**fields)
    return config


@pytest.fixture(scope="module")
def predictor(sim_root, sam21_checkpoint, tmp_path_factory):
    """One predictor for every model test, so that its compiled steps are reused."""
    return from_config.load_predictor(_config(sim_root, sam21_checkpoint, tmp_path_factory.mktemp("unused")))


def _read_png(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def _check_pngs(out, settings, categories, video_frames: dict[str, list[int]]) -> None:
    for setting in settings:
        for category in categories:
            for video, frame_ids in video_frames.items():
                folder = os.path.join(out, setting, category, video)
                assert sorted(os.listdir(folder)) == [f"{i:05d}.png" for i in frame_ids]
                png = _read_png(os.path.join(folder, f"{frame_ids[0]:05d}.png"))
                assert png.shape == (SIZE, SIZE) and png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}


def _summary(out) -> list[dict]:
    with open(os.path.join(out, "results.csv")) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------- no model: oracle masks
def test_oracle_masks_score_100_and_an_empty_prediction_0(sim_root, tmp_path):
    """The panda video is predicted perfectly, the kuka video not at all: per video J&F 100 and 0, the dataset
    mean 50 (unweighted over videos), per embodiment 100 and 0; the PNGs are the GT."""
    results = report.EvalResults(["1C"], CATEGORIES)
    for video in eval_videos.open_videos(sim_root, "test"):
        for category in CATEGORIES:
            gt = video.read_gt(category)
            start = first_visible_frame(gt)
            perfect = video.name == "sim_00000_panda"
            masks = {p: gt[p] if perfect else np.zeros_like(gt[p]) for p in sorted(gt) if p >= start}
            score = runner.record_prediction(video, masks, gt, str(tmp_path / "1C" / category), guided_filter=False)
            assert score.jf == (100.0 if perfect else 0.0)
            results.add("1C", category, video.name, video.embodiment, score)
    paths = report.write_report(results, str(tmp_path), {"note": "oracle"})

    for category in CATEGORIES:
        folder = tmp_path / "1C" / category / "sim_00000_panda"
        for frame_id in range(NUM_FRAMES):
            gt_png = os.path.join(
                sim_root, "test", "mask_gt", "sim_00000_panda", CATEGORY_FOLDERS[category], f"{frame_id:05d}.png"
            )
            np.testing.assert_array_equal(_read_png(folder / f"{frame_id:05d}.png"), _read_png(gt_png))
    rows = {(r["category"], r["group"]): r for r in _summary(tmp_path)}
    assert set(rows) == {(c, g) for c in CATEGORIES for g in ("all", "panda", "kuka_iiwa")}
    for category in CATEGORIES:
        assert float(rows[category, "all"]["J&F"]) == 50.0 and rows[category, "all"]["videos"] == "2"
        assert float(rows[category, "panda"]["J&F"]) == 100.0 and float(rows[category, "kuka_iiwa"]["J"]) == 0.0
    with open(paths[1]) as f:
        document = json.load(f)
    assert document["run"] == {"note": "oracle"} and document["embodiments"] == EMBODIMENTS
    assert document["per_video"]["1C"]["robot"]["sim_00000_panda"] == {"J": 100.0, "F": 100.0, "J&F": 100.0}
    with open(tmp_path / "1C" / "robot" / "results_robot.csv") as f:
        upstream_csv = f.read().splitlines()
    assert upstream_csv[1].split(",")[2:] == [" 50.0", " 50.0", " 50.0"]
    assert upstream_csv[2].startswith("sim_00000_panda") and ",002," in upstream_csv[2]
    lines = report.table(results).splitlines()
    assert lines[0].split() == ["J&F", "(%)", *CATEGORIES]
    assert lines[1].split() == ["1C", "50.0", "50.0", "50.0"]
    assert lines[2].split() == ["kuka_iiwa", "0.0", "0.0", "0.0"] and lines[3].split() == ["panda", *["100.0"] * 3]


def test_frames_not_predicted_are_saved_and_scored_as_empty(sim_root, tmp_path):
    video = next(iter(eval_videos.open_videos(sim_root, "test")))
    gt = video.read_gt("robot")
    later = {p: gt[p] for p in (2, 3)}
    score = runner.record_prediction(video, later, {p: gt[p] for p in gt}, str(tmp_path), guided_filter=True)
    folder = tmp_path / video.folder
    assert not _read_png(folder / "00000.png").any() and not _read_png(folder / "00001.png").any()
    np.testing.assert_array_equal(_read_png(folder / "00002.png") > 0, gt[2])  # the first yielded mask: no filter
    assert 0 <= score.j < 100  # frames 0 and 1 count as misses: the GT is visible there


def test_unlabelled_and_never_visible_categories_are_skipped(sim_root, tmp_path):
    """Neither needs the model: the runner decides before a prompt is placed."""
    empty_gt = eval_videos.EvalVideo(
        name="v",
        folder="v",
        embodiment="panda",
        frame_ids=[0],
        load=lambda: None,
        read_frame=lambda i: None,
        read_gt=lambda c: {0: np.zeros((4, 4), bool)} if c == "arm" else {},
    )
    results = runner.evaluate(None, [empty_gt], ["1C"], ["arm", "gripper"], str(tmp_path), progress=False)
    assert results.skipped == [
        {"video": "v", "category": "arm", "reason": "the GT is empty in every frame"},
        {"video": "v", "category": "gripper", "reason": "no GT masks for this category"},
    ]
    assert report.table(results).splitlines()[1].split() == ["1C", "-", "-"]


# ---------------------------------------------------------------------------------------- random-weight SAM 2.1
def test_sam21_one_click_and_box_on_every_category(sim_root, sam21_checkpoint, predictor, tmp_path):
    config = _config(sim_root, sam21_checkpoint, tmp_path, settings="AU,1C,BB")
    run = from_config.run_plan(from_config.plan_from_config(config), predictor)

    results = run.results
    assert results.unavailable == {"AU": "VideoPredictor has no add_new_robot (SAM 2.x has no robot prompts)"}
    assert results.skipped == [] and results.embodiments == EMBODIMENTS
    _check_pngs(tmp_path, ["1C", "BB"], CATEGORIES, {v: list(range(NUM_FRAMES)) for v in EMBODIMENTS})
    rows = _summary(tmp_path)
    assert len(rows) == 2 * len(CATEGORIES) * 3  # (1C, BB) x categories x (all + 2 embodiments); AU has none
    for row in rows:
        for key in ("J", "F", "J&F"):
            assert 0.0 <= float(row[key]) <= 100.0
    with open(tmp_path / "results.json") as f:
        document = json.load(f)
    assert document["run"]["settings"] == "AU,1C,BB" and "AU" in document["unavailable"]
    assert set(document["per_video"]) == {"1C", "BB"}
    assert set(document["per_video"]["BB"]["gripper"]) == set(EMBODIMENTS)

    lines = report.table(results).splitlines()
    assert [line.split()[0] for line in lines[1:8]] == ["AU", "1C", "kuka_iiwa", "panda", "BB", "kuka_iiwa", "panda"]
    assert lines[1].split() == ["AU", "-", "-", "-"]
    assert lines[-1].startswith("AU: ")


def test_image_mode_scores_every_labelled_frame_alone(sim_root, sam21_checkpoint, predictor, tmp_path):
    config = _config(sim_root, sam21_checkpoint, tmp_path, settings="1C", categories="robot", image_mode=True)
    results = from_config.run_plan(from_config.plan_from_config(config), predictor).results
    names = {f"{video}/{i:05d}" for video in EMBODIMENTS for i in range(NUM_FRAMES)}
    assert set(results.scores["1C", "robot"]) == names
    assert results.groups("1C", "robot")["all"][1] == len(names)
    _check_pngs(tmp_path, ["1C"], ["robot"], {v: list(range(NUM_FRAMES)) for v in EMBODIMENTS})


def test_tfds_input_gives_the_same_scores_as_the_layout(sim_root, sam21_checkpoint, predictor, tmp_path):
    data_dir = str(tmp_path / "tfds")
    tfds_builders.build("vrs_sim", manual_dir=sim_root, data_dir=data_dir)
    layout = _config(sim_root, sam21_checkpoint, tmp_path / "layout", settings="BB", categories="arm", max_videos=1)
    tfds = _config(
        sim_root,
        sam21_checkpoint,
        tmp_path / "tfds_out",
        settings="BB",
        categories="arm",
        max_videos=1,
        data="tfds:vrs_sim:test",
        data_dir=data_dir,
    )
    scores = [from_config.run_plan(from_config.plan_from_config(c), predictor).results.scores for c in (layout, tfds)]
    assert scores[0] == scores[1] and len(scores[0]["BB", "arm"]) == 1


def test_robotseg_automatic_and_one_click_in_image_mode(sim_root, robotseg_checkpoint, tmp_path):
    """RobotSeg gets the category on every call: add_new_robot (AU), robots= with a click (1C), robot= when
    propagating. In image mode (as RobotSeg evaluates RoboEngine), so that no tracking step compiles."""
    config = _config(
        sim_root,
        robotseg_checkpoint,
        tmp_path,
        model="robotseg_hiera_t",
        settings="AU,1C",
        categories="robot",
        max_videos=1,
        image_mode=True,
        guided_filter=False,
    )
    predictor = from_config.load_predictor(config)
    assert session.supports_robot_prompts(predictor)
    results = from_config.run_plan(from_config.plan_from_config(config), predictor).results
    assert results.unavailable == {} and results.skipped == []
    _check_pngs(tmp_path, ["AU", "1C"], ["robot"], {"sim_00000_panda": list(range(NUM_FRAMES))})
    for setting in ("AU", "1C"):
        score, count = results.groups(setting, "robot")["all"]
        assert count == NUM_FRAMES and 0.0 <= score.j <= 100.0 and 0.0 <= score.f <= 100.0
    assert report.table(results).splitlines()[1].split()[0] == "AU"


# ------------------------------------------------------------------------------------------------------- errors
def _config_error(config) -> str:
    with pytest.raises((from_config.ConfigError, eval_videos.DatasetError)) as info:
        from_config.plan_from_config(config)
    return str(info.value)


def test_readable_errors(sim_root, sam21_checkpoint, tmp_path):
    assert "no checkpoint at" in _config_error(_config(sim_root, str(tmp_path / "absent.pt"), tmp_path))
    assert "checkpoint is required" in _config_error(_config(sim_root, None, tmp_path))
    assert "data is required" in _config_error(_config(None, sam21_checkpoint, tmp_path))
    assert "no dataset folder at" in _config_error(_config(str(tmp_path / "absent"), sam21_checkpoint, tmp_path))
    assert "'val' split" in _config_error(_config(sim_root, sam21_checkpoint, tmp_path, split="val"))
    assert "cannot open TFDS dataset 'vrs_sim'" in _config_error(
        _config("tfds:vrs_sim", sam21_checkpoint, tmp_path, data_dir=str(tmp_path / "no_tfds"))
    )
    assert "subset of AU,1C,3C,BB,OI" in _config_error(_config(sim_root, sam21_checkpoint, tmp_path, settings="1C,2C"))
    leg = _config(sim_root, sam21_checkpoint, tmp_path, categories="leg")
    assert "subset of arm,gripper,robot" in _config_error(leg)
    assert "no image mode" in _config_error(_config(sim_root, sam21_checkpoint, tmp_path, image_mode=True))
    assert "multiple of 32" in _config_error(_config(sim_root, sam21_checkpoint, tmp_path, image_size=100))
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    with pytest.raises(from_config.ConfigError, match="cannot load the checkpoint"):
        from_config.load_predictor(_config(sim_root, str(tmp_path / "garbage.pt"), tmp_path))


def test_command_line_reports_a_missing_checkpoint_without_traceback(sim_root, tmp_path):
    command = [
        sys.executable,
        "-m",
        "robotseg_jax.evaluate",
        "--config",
        "configs/eval_vrs.py",
        f"--config.checkpoint={tmp_path / 'absent.pt'}",
        f"--config.data={sim_root}",
    ]
    run = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO_ROOT)
    assert run.returncode == 2
    assert f"error: no checkpoint at {tmp_path / 'absent.pt'}" in run.stderr and "Traceback" not in run.stderr
