"""`python -m robotseg_jax.predict` end to end on a tiny JPEG video, and its usage errors (no tracebacks)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from robotseg_jax import predict
from robotseg_jax.checkpoints import convert
from tests.reference import build_reference

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
def checkpoint(tmp_path_factory) -> str:
    """A random-weight SAM 2.1 Hiera-T written as an official .pt (the params do not depend on the image size)."""
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_t.pt"
    reference = build_reference("sam2.1_hiera_t", image_size=128, seed=5)
    convert.save_torch_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, path)
    return str(path)


def _args(video: str, ckpt: str, out, *prompt: str) -> list[str]:
    return ["--checkpoint", ckpt, "--video", video, "--image-size", str(IMAGE_SIZE), "--out", str(out), *prompt]


def test_clicks_on_a_middle_frame_track_both_ways(video_dir, checkpoint, tmp_path, capsys):
    args = _args(video_dir, checkpoint, tmp_path, "--points", "30,30", "80,50,0", "--frame", "1")
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


def test_mask_prompt_is_the_first_frames_output(video_dir, checkpoint, tmp_path):
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[20:40, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "prompt.png")
    assert predict.main(_args(video_dir, checkpoint, tmp_path / "out", "--mask", str(tmp_path / "prompt.png"))) == 0
    with Image.open(tmp_path / "out" / "masks" / "00000.png") as first:
        output = np.array(first) > 0
    # A mask prompt is the frame's output (sam2's mask-as-output), up to its trip through the low-res logits.
    prompt = mask > 0
    assert (output & prompt).sum() / (output | prompt).sum() > 0.85
    assert len(os.listdir(tmp_path / "out" / "masks")) == NUM_FRAMES


def _usage_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        predict.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    return err


def test_usage_errors(video_dir, checkpoint, tmp_path, capsys):
    def ok(*prompt: str) -> list[str]:
        return _args(video_dir, checkpoint, tmp_path / "out", *prompt)

    absent_checkpoint = _args(video_dir, str(tmp_path / "absent.pt"), tmp_path, "--box", "1,1,5,5")
    assert "no checkpoint at" in _usage_error(capsys, absent_checkpoint)
    absent_video = _args(str(tmp_path / "absent"), checkpoint, tmp_path, "--box", "1,1,5,5")
    assert "No video at" in _usage_error(capsys, absent_video)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00000.jpg").write_text("not a jpeg")
    assert "Cannot read frame 0" in _usage_error(capsys, _args(str(broken), checkpoint, tmp_path, "--box", "1,1,5,5"))
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


def test_command_line_reports_a_missing_checkpoint_without_traceback(video_dir, tmp_path):
    args = _args(video_dir, str(tmp_path / "absent.pt"), tmp_path, "--points", "10,10")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "robotseg_jax.predict", *args]
    run = subprocess.run(command, capture_output=True, text=True, cwd=repo_root)
    assert run.returncode == 2
    assert "no checkpoint at" in run.stderr and "Traceback" not in run.stderr
