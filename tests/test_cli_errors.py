"""Every command line turns a user error (a missing or unreadable file, a corrupt or mismatched checkpoint, an
unknown model or category, a bad config override, a bad prompt or argument) into one message on stderr that names
the culprit, and exit status 2, without a traceback; `ROBOTSEG_TRACEBACK=1` shows the traceback.

Each case runs the CLI as a user does, `python -m robotseg_jax.<name> ...` in a subprocess, on tiny inputs, and
fails before any heavy work (no data is rendered or built, no model is compiled)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from robotseg_jax.cli import TRACEBACK_ENV
from robotseg_jax.data import vrs_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TORCH = importlib.util.find_spec("torch") is not None
QUICKSTART = os.path.join(REPO, "configs", "quickstart.py")
EVAL_CONFIG = os.path.join(REPO, "configs", "eval_vrs.py")
LOOKS_LIKE_HIERA_S = "this checkpoint looks like sam2.1_hiera_s: pass --model sam2.1_hiera_s"


def run_cli(name: str, *args, traceback: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != TRACEBACK_ENV}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    if traceback:
        env[TRACEBACK_ENV] = "1"
    command = [sys.executable, "-m", f"robotseg_jax.{name}", *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)


def assert_user_error(run: subprocess.CompletedProcess, *culprits) -> None:
    """Exit status 2, no traceback, and every culprit (file, key, model, value) named on stderr."""
    tail = run.stderr[-4000:]
    assert run.returncode == 2, f"exit status {run.returncode}:\n{tail}"
    assert "Traceback" not in run.stderr, tail
    assert "error:" in run.stderr, tail
    for culprit in culprits:
        assert str(culprit) in run.stderr, f"{culprit!r} is not named:\n{tail}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Tiny shared inputs: broken and mismatched checkpoints, a JPEG video, VRS layouts with and without labels."""
    root = tmp_path_factory.mktemp("cli_errors")
    paths = {name: str(root / name) for name in ("bad.pt", "absent.pt", "a_file", "video", "layout", "unlabelled",
                                                 "hiera_s_orbax", "dinov3.pth", "empty_dir", "absent")}
    (root / "bad.pt").write_text("x\n")  # `echo x > bad.pt`
    (root / "a_file").write_text("a file where a folder should be\n")
    (root / "dinov3.pth").write_text("not a checkpoint\n")
    (root / "empty_dir").mkdir()
    # An orbax checkpoint directory of another model (its model.json is read before any array).
    (root / "hiera_s_orbax" / "params").mkdir(parents=True)
    (root / "hiera_s_orbax" / "model.json").write_text(json.dumps({"model": "sam2.1_hiera_s"}))
    (root / "video").mkdir()
    for i in range(2):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(root / "video" / f"{i:05d}.jpg")
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    masks = {c: np.zeros((2, 32, 32), bool) for c in ("arm", "gripper", "robot")}
    for category in masks.values():
        category[:, 8:16, 8:16] = True
    vrs_layout.write_video(paths["layout"], "test", "video_a", frames, masks)
    vrs_layout.write_video(paths["layout"], "train", "video_a", frames, masks, label_frames=[0])
    vrs_layout.write_video(paths["unlabelled"], "train", "video_b", frames, {})
    if HAS_TORCH:
        import torch

        # The keys by which a checkpoint is recognised as SAM 2.1 Hiera-S: its trunk's width and 16 blocks.
        hiera_s = {
            "image_encoder.trunk.patch_embed.proj.weight": torch.zeros(96, 3, 7, 7),
            "image_encoder.trunk.blocks.15.norm1.weight": torch.zeros(96),
            "no_obj_embed_spatial": torch.zeros(1, 64),
        }
        paths["hiera_s.pt"] = str(root / "hiera_s.pt")
        torch.save({"model": hiera_s}, paths["hiera_s.pt"])
    return paths


def not_a_checkpoint(path: str) -> str:
    """What the message says about `echo x > path`: with PyTorch it reads the file, without it says it needs it."""
    return f"{path} is not a PyTorch checkpoint" if HAS_TORCH else f"reading {path} needs PyTorch"


# ---------------------------------------------------------------------------------------------------------- train
def test_train_unknown_override_key(tmp_path):
    run = run_cli("train", "--config", QUICKSTART, "--workdir", tmp_path, "--config.data.batch_sise=3")
    assert_user_error(run, "--config.data.batch_sise", "did you mean 'batch_size'")


def test_train_override_of_the_wrong_type(tmp_path):
    run = run_cli("train", "--config", QUICKSTART, "--workdir", tmp_path, "--config.data.batch_size=three")
    assert_user_error(run, "--config.data.batch_size=three")


def test_train_missing_config_file(tmp_path):
    run = run_cli("train", "--config", tmp_path / "nope.py", "--workdir", tmp_path)
    assert_user_error(run, f"no config file at {tmp_path / 'nope.py'}")


def test_train_missing_required_flag():
    assert_user_error(run_cli("train", "--config", QUICKSTART), "--workdir")


def test_train_unknown_model_fails_before_data_is_rendered(tmp_path):
    run = run_cli("train", "--config", QUICKSTART, "--workdir", tmp_path, "--config.model=nope")
    assert_user_error(run, "Unknown model 'nope'")
    assert not os.path.exists(tmp_path / "data")


def test_train_bad_checkpoint_fails_before_data_is_rendered(inputs, tmp_path):
    checkpoint = f"--config.init_checkpoint={inputs['bad.pt']}"
    run = run_cli("train", "--config", QUICKSTART, "--workdir", tmp_path, checkpoint)
    assert_user_error(run, not_a_checkpoint(inputs["bad.pt"]))
    assert not os.path.exists(tmp_path / "data")


def test_train_unwritable_workdir(inputs):
    workdir = os.path.join(inputs["a_file"], "run")
    assert_user_error(run_cli("train", "--config", QUICKSTART, "--workdir", workdir), workdir)


# ------------------------------------------------------------------------------------------------------- evaluate
def evaluate(*overrides: str) -> subprocess.CompletedProcess:
    return run_cli("evaluate", "--config", EVAL_CONFIG, *overrides)


def test_evaluate_unknown_override_key(inputs):
    run = evaluate("--config.chekpoint=x.pt", f"--config.data={inputs['layout']}")
    assert_user_error(run, "--config.chekpoint", "did you mean 'checkpoint'")


def test_evaluate_missing_config():
    assert_user_error(run_cli("evaluate"), "--config is required")


def test_evaluate_missing_checkpoint(inputs):
    run = evaluate(f"--config.checkpoint={inputs['absent.pt']}", f"--config.data={inputs['layout']}")
    assert_user_error(run, f"no checkpoint at {inputs['absent.pt']}")


def test_evaluate_bad_checkpoint(inputs, tmp_path):
    run = evaluate(f"--config.checkpoint={inputs['bad.pt']}", f"--config.data={inputs['layout']}",
                   f"--config.out={tmp_path}")
    assert_user_error(run, not_a_checkpoint(inputs["bad.pt"]))


def test_evaluate_mismatched_checkpoint(inputs, tmp_path):
    run = evaluate(f"--config.checkpoint={inputs['hiera_s_orbax']}", "--config.model=sam2.1_hiera_t",
                   f"--config.data={inputs['layout']}", f"--config.out={tmp_path}", "--config.settings=1C")
    assert_user_error(run, "holds a sam2.1_hiera_s checkpoint, not sam2.1_hiera_t: pass --model sam2.1_hiera_s")


def test_evaluate_unknown_category_and_model(inputs):
    common = (f"--config.checkpoint={inputs['bad.pt']}", f"--config.data={inputs['layout']}")
    assert_user_error(evaluate(*common, "--config.categories=arm,leg"), "'arm,leg'")
    assert_user_error(evaluate(*common, "--config.model=nope"), "Unknown model 'nope'")


def test_evaluate_missing_data(inputs):
    run = evaluate(f"--config.checkpoint={inputs['bad.pt']}", f"--config.data={inputs['absent']}")
    assert_user_error(run, f"no dataset folder at {inputs['absent']}")


# -------------------------------------------------------------------------------------------------------- segment
SEGMENT_CONFIG = os.path.join(REPO, "configs", "segment.py")


def test_segment_missing_source_and_sam21_model(inputs, tmp_path):
    common = ["--config", SEGMENT_CONFIG, f"--config.checkpoint={inputs['bad.pt']}", f"--config.out={tmp_path}"]
    assert_user_error(run_cli("segment", *common, f"--config.source={inputs['absent']}"), "no source folder",
                      inputs["absent"])
    run = run_cli("segment", *common, f"--config.source={inputs['video']}", "--config.model=sam2.1_hiera_t")
    assert_user_error(run, "sam2.1_hiera_t has no robot prompts")


# -------------------------------------------------------------------------------------------------------- predict
def predict(inputs, tmp_path, *args: str, checkpoint: str | None = None, video: str | None = None):
    return run_cli("predict", "--checkpoint", checkpoint or inputs["bad.pt"], "--video", video or inputs["video"],
                   "--out", tmp_path / "out", *args)


def test_predict_missing_video(inputs, tmp_path):
    run = predict(inputs, tmp_path, "--points", "10,10", video=inputs["absent"])
    assert_user_error(run, f"No video at {inputs['absent']}")


def test_predict_missing_and_bad_checkpoint(inputs, tmp_path):
    assert_user_error(predict(inputs, tmp_path, "--points", "10,10", checkpoint=inputs["absent.pt"]),
                      f"no checkpoint at {inputs['absent.pt']}")
    assert_user_error(predict(inputs, tmp_path, "--points", "10,10"), not_a_checkpoint(inputs["bad.pt"]))


def test_predict_mismatched_checkpoint(inputs, tmp_path):
    run = predict(inputs, tmp_path, "--points", "10,10", "--model", "sam2.1_hiera_t",
                  checkpoint=inputs["hiera_s_orbax"])
    assert_user_error(run, "holds a sam2.1_hiera_s checkpoint, not sam2.1_hiera_t: pass --model sam2.1_hiera_s")


@pytest.mark.reference
def test_predict_mismatched_torch_checkpoint(inputs, tmp_path):
    run = predict(inputs, tmp_path, "--points", "10,10", "--model", "sam2.1_hiera_t", checkpoint=inputs["hiera_s.pt"])
    assert_user_error(run, inputs["hiera_s.pt"], LOOKS_LIKE_HIERA_S)


def test_predict_unknown_model(inputs, tmp_path):
    assert_user_error(predict(inputs, tmp_path, "--points", "10,10", "--model", "nope"), "invalid choice: 'nope'")


def test_predict_bad_prompts(inputs, tmp_path):
    assert_user_error(predict(inputs, tmp_path, "--points", "12;30"), "'12;30'")
    assert_user_error(predict(inputs, tmp_path, "--box", "10,10,90,20"), "outside the 64x48 frame")
    absent_mask = os.path.join(inputs["absent"], "mask.png")
    assert_user_error(predict(inputs, tmp_path, "--mask", absent_mask), absent_mask)


def test_predict_unwritable_out(inputs):
    out = os.path.join(inputs["a_file"], "out")
    run = run_cli("predict", "--checkpoint", inputs["bad.pt"], "--video", inputs["video"], "--points", "1,1",
                  "--out", out)
    assert_user_error(run, out)


# -------------------------------------------------------------------------------------------------------- convert
def convert(*args: str) -> subprocess.CompletedProcess:
    return run_cli("convert", *args)


@pytest.mark.reference
def test_convert_checkpoint_of_another_model(inputs, tmp_path):
    run = convert("--from-torch", inputs["hiera_s.pt"], "--model", "sam2.1_hiera_t", "--out", tmp_path / "x")
    assert_user_error(run, inputs["hiera_s.pt"], LOOKS_LIKE_HIERA_S)


def test_convert_not_a_checkpoint_and_missing_file(inputs, tmp_path):
    run = convert("--from-torch", inputs["bad.pt"], "--model", "sam2.1_hiera_t", "--out", tmp_path / "x")
    assert_user_error(run, not_a_checkpoint(inputs["bad.pt"]))
    run = convert("--from-torch", inputs["absent.pt"], "--model", "sam2.1_hiera_t", "--out", tmp_path / "x")
    assert_user_error(run, f"No checkpoint at {inputs['absent.pt']}")


def test_convert_to_torch_from_a_folder_that_is_no_checkpoint(inputs, tmp_path):
    run = convert("--to-torch", "--model", "sam2.1_hiera_t", "--from", inputs["empty_dir"], "--out", tmp_path / "x.pt")
    assert_user_error(run, f"{inputs['empty_dir']} is not a robotseg_jax checkpoint")
    run = convert("--to-torch", "--model", "sam2.1_hiera_t", "--from", inputs["hiera_s_orbax"], "--out", tmp_path / "x")
    assert_user_error(run, "pass --model sam2.1_hiera_s")


# ---------------------------------------------------------------------------------------------- teacher.propagate
def propagate(*args: str) -> subprocess.CompletedProcess:
    return run_cli("teacher.propagate", "--model", "vits16", *args)


def test_propagate_missing_data_and_checkpoint(inputs):
    assert_user_error(propagate("--data", inputs["absent"], "--checkpoint", inputs["dinov3.pth"]),
                      f"no dataset folder at {inputs['absent']}")
    assert_user_error(propagate("--data", inputs["empty_dir"], "--checkpoint", inputs["dinov3.pth"]),
                      os.path.join(inputs["empty_dir"], "train", "image"))
    missing = os.path.join(inputs["absent"], "dinov3.pth")
    run = propagate("--data", inputs["layout"], "--checkpoint", missing)
    assert_user_error(run, f"checkpoint not found: {missing}")


def test_propagate_folder_without_labels(inputs):
    run = propagate("--data", inputs["unlabelled"], "--checkpoint", inputs["dinov3.pth"])
    assert_user_error(run, "no first-frame label", os.path.join(inputs["unlabelled"], "train", "mask_gt", "video_b"))


def test_propagate_bad_checkpoint(inputs):
    run = propagate("--data", inputs["layout"], "--checkpoint", inputs["dinov3.pth"])
    expected = "is not a PyTorch checkpoint" if HAS_TORCH else "needs PyTorch"
    assert_user_error(run, inputs["dinov3.pth"], expected)


# ------------------------------------------------------------------------------------------------------- data.sim
def test_sim_bad_arguments(tmp_path):
    out = tmp_path / "sim"
    assert_user_error(run_cli("data.sim", "--out", out, "--videos", "-1"), "'-1'")
    assert_user_error(run_cli("data.sim", "--out", out, "--videos", "1", "--holdout-embodiment", "robot9"), "'robot9'")
    assert_user_error(run_cli("data.sim", "--out", out, "--videos", "1", "--splits", "train=0.5"), "must sum to 1")
    assert not os.path.exists(out)


def test_sim_unwritable_out(inputs):
    out = os.path.join(inputs["a_file"], "sim")
    assert_user_error(run_cli("data.sim", "--out", out, "--videos", "1"), out)


# ---------------------------------------------------------------------------------------------- data.tfds_builders
def test_tfds_builders_missing_manual_dir_and_not_a_layout(inputs, tmp_path):
    data_dir = tmp_path / "tfds"
    run = run_cli("data.tfds_builders", "vrs", "--manual_dir", inputs["absent"], "--data_dir", data_dir)
    assert_user_error(run, f"no manual dir (VRS layout folder) at {inputs['absent']}")
    run = run_cli("data.tfds_builders", "vrs", "--manual_dir", inputs["empty_dir"], "--data_dir", data_dir)
    assert_user_error(run, f"no split under {inputs['empty_dir']}")
    assert_user_error(run_cli("data.tfds_builders", "vrs_typo", "--manual_dir", inputs["layout"]), "'vrs_typo'")


# ------------------------------------------------------------------------------------------------------ traceback
def test_traceback_on_request(inputs, tmp_path):
    run = run_cli("convert", "--from-torch", inputs["absent.pt"], "--model", "sam2.1_hiera_t", "--out", tmp_path / "x",
                  traceback=True)
    assert run.returncode == 1 and "Traceback" in run.stderr and "CheckpointNotFoundError" in run.stderr
    run = run_cli("train", "--config", QUICKSTART, "--workdir", tmp_path, "--config.data.batch_sise=3", traceback=True)
    assert run.returncode == 1 and "Traceback" in run.stderr and "batch_sise" in run.stderr
