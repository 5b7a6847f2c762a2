"""`python -m robotseg_jax.predict` end to end on a tiny JPEG video (SAM 2.1 and RobotSeg models), and its usage
errors (no tracebacks)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from robotseg_jax import convert as convert_cli
from robotseg_jax import predict
from robotseg_jax.inference import RobotSegVideoPredictor, build_video_predictor

HEIGHT, WIDTH, NUM_FRAMES = 64, 96, 4
IMAGE_SIZE = 64


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> str:
    """Four JPEG frames of a bright square moving right over a gradient."""
    folder = tmp_path_factory.mktemp("video")
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    for t in range(NUM_FRAMES):
        frame = np.stack([xx * 2, yy * 3, np.full_like(xx, 60)], -1).astype(np.uint8)
        frame[20:40, 10 + 8 * t : 30 + 8 * t] = (240, 230, 40)
        Image.fromarray(frame).save(folder / f"{t:05d}.jpg")
    return str(folder)


@pytest.fixture(scope="module")
def robotseg_checkpoint(sam21_checkpoint, tmp_path_factory) -> str:
    """A RobotSeg orbax directory that the converter starts from the random SAM 2.1 checkpoint."""
    out = tmp_path_factory.mktemp("ckpt") / "robotseg_hiera_t"
    argv = ["--from-torch", sam21_checkpoint, "--model", "robotseg_hiera_t", "--init-from-sam2", "--out", str(out)]
    assert convert_cli.main(argv) == 0
    return str(out)


def _args(video: str, ckpt: str, out, *prompt: str) -> list[str]:
    return ["--checkpoint", ckpt, "--video", video, "--image-size", str(IMAGE_SIZE), "--out", str(out), *prompt]


def test_clicks_on_a_middle_frame_track_both_ways(video_dir, sam21_checkpoint, tmp_path, capsys):
    args = _args(video_dir, sam21_checkpoint, tmp_path, "--points", "30,30", "80,50,0", "--frame", "1")
    assert predict.main(args) == 0
    names = sorted(os.listdir(tmp_path / "masks"))
    assert names == [f"{t:05d}.png" for t in range(NUM_FRAMES)]
    for name in names:
        with Image.open(tmp_path / "masks" / name) as mask:
            assert mask.size == (WIDTH, HEIGHT) and mask.mode == "L"
            assert set(np.unique(np.array(mask))) <= {0, 255}
    with Image.open(tmp_path / "overlay.gif") as gif:
        assert gif.size == (WIDTH, HEIGHT) and gif.n_frames == NUM_FRAMES
    assert "4 masks" in capsys.readouterr().out


def test_mask_prompt_is_the_first_frames_output(video_dir, sam21_checkpoint, tmp_path):
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[20:40, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "prompt.png")
    args = _args(video_dir, sam21_checkpoint, tmp_path / "out", "--mask", str(tmp_path / "prompt.png"))
    assert predict.main(args) == 0
    with Image.open(tmp_path / "out" / "masks" / "00000.png") as first:
        output = np.array(first) > 0
    # A mask prompt is the frame's output (sam2's mask-as-output), up to its trip through the low-res logits.
    prompt = mask > 0
    assert (output & prompt).sum() / (output | prompt).sum() > 0.85
    assert len(os.listdir(tmp_path / "out" / "masks")) == NUM_FRAMES


def test_robot_category_segments_every_frame_as_the_library_does(video_dir, robotseg_checkpoint, tmp_path, monkeypatch):
    # RPG's FPS starts are unseeded by default, as the original's: --seed makes the two runs comparable. The library
    # run reuses the CLI's predictor (a fresh state, seeded alike), hence its compiled steps.
    built = []

    def recorded(*args, **kwargs) -> RobotSegVideoPredictor:
        built.append(build_video_predictor(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(predict, "build_video_predictor", recorded)
    robot = ["--model", "robotseg_hiera_t", "--robot", "robot", "--frame", "1", "--seed", "0"]
    assert predict.main(_args(video_dir, robotseg_checkpoint, tmp_path, *robot)) == 0
    names = sorted(os.listdir(tmp_path / "masks"))
    assert names == [f"{t:05d}.png" for t in range(NUM_FRAMES)]
    with Image.open(tmp_path / "overlay.gif") as gif:
        assert gif.size == (WIDTH, HEIGHT) and gif.n_frames == NUM_FRAMES

    [predictor] = built
    assert isinstance(predictor, RobotSegVideoPredictor)
    state = predictor.init_state(video_dir)
    predictor.add_new_robot(state, 1, predict.OBJ_ID, "robot")
    expected = {}
    for reverse in (False, True):  # frame 1 onwards, then frame 1 back to 0
        for t, obj_ids, logits in predictor.propagate_in_video(state, "robot", start_frame_idx=1, reverse=reverse):
            expected.setdefault(t, logits[obj_ids.index(predict.OBJ_ID), 0] > 0)
    assert sorted(expected) == list(range(NUM_FRAMES))
    for t, mask in expected.items():
        with Image.open(tmp_path / "masks" / f"{t:05d}.png") as written:
            np.testing.assert_array_equal(np.array(written) > 0, mask, err_msg=f"frame {t}")
    assert any(mask.any() and not mask.all() for mask in expected.values())  # not a vacuous comparison


def test_robotseg_clicks_track_without_a_category(video_dir, robotseg_checkpoint, tmp_path):
    # RobotSeg's propagate_in_video requires its category argument: after clicks it is None (no class token).
    args = _args(video_dir, robotseg_checkpoint, tmp_path, "--model", "robotseg_hiera_t", "--points", "20,30")
    assert predict.main(args) == 0
    assert len(os.listdir(tmp_path / "masks")) == NUM_FRAMES


def _usage_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        predict.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    return err


def test_usage_errors(video_dir, sam21_checkpoint, tmp_path, capsys):
    def ok(*prompt: str) -> list[str]:
        return _args(video_dir, sam21_checkpoint, tmp_path / "out", *prompt)

    absent_checkpoint = _args(video_dir, str(tmp_path / "absent.pt"), tmp_path, "--box", "1,1,5,5")
    assert "no checkpoint at" in _usage_error(capsys, absent_checkpoint)
    absent_video = _args(str(tmp_path / "absent"), sam21_checkpoint, tmp_path, "--box", "1,1,5,5")
    assert "No video at" in _usage_error(capsys, absent_video)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00000.jpg").write_text("not a jpeg")
    broken_video = _args(str(broken), sam21_checkpoint, tmp_path, "--box", "1,1,5,5")
    assert "Cannot read frame 0" in _usage_error(capsys, broken_video)
    assert "expected a point x,y" in _usage_error(capsys, ok("--points", "12;30"))
    assert "label must be 1" in _usage_error(capsys, ok("--points", "12,30,2"))
    assert "x0 < x1" in _usage_error(capsys, ok("--box", "50,10,20,30"))
    assert "outside the 96x64 frame" in _usage_error(capsys, ok("--points", "100,10"))
    assert "outside the 96x64 frame" in _usage_error(capsys, ok("--box", "10,10,50,70"))
    assert "outside the video's 4 frames" in _usage_error(capsys, ok("--points", "10,10", "--frame", "4"))
    assert "multiple of 32" in _usage_error(capsys, ok("--points", "10,10") + ["--image-size", "50"])
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    assert "the mask is 10x10" in _usage_error(capsys, ok("--mask", str(tmp_path / "small.png")))
    (tmp_path / "garbage.pt").write_text("not a checkpoint")
    garbage = _args(video_dir, str(tmp_path / "garbage.pt"), tmp_path, "--box", "1,1,5,5")
    assert "cannot load the checkpoint" in _usage_error(capsys, garbage)


def test_robot_usage_errors(video_dir, sam21_checkpoint, tmp_path, capsys, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("the weights were loaded before the usage error")

    monkeypatch.setattr(predict, "build_video_predictor", no_weights)
    sam21 = _args(video_dir, sam21_checkpoint, tmp_path, "--robot", "arm")
    assert "--robot needs a RobotSeg model (robotseg_hiera_t): sam2.1_hiera_t has" in _usage_error(capsys, sam21)
    robotseg = _args(video_dir, sam21_checkpoint, tmp_path, "--model", "robotseg_hiera_t")  # argparse's own errors
    assert "invalid choice: 'unknown'" in _usage_error(capsys, [*robotseg, "--robot", "unknown"])
    assert "not allowed with argument" in _usage_error(capsys, [*robotseg, "--robot", "arm", "--points", "10,10"])


def test_command_line_reports_a_missing_checkpoint_without_traceback(video_dir, tmp_path):
    args = _args(video_dir, str(tmp_path / "absent.pt"), tmp_path, "--points", "10,10")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "robotseg_jax.predict", *args]
    run = subprocess.run(command, check=False, capture_output=True, text=True, cwd=repo_root)
    assert run.returncode == 2
    assert "no checkpoint at" in run.stderr and "Traceback" not in run.stderr
