"""`python -m robotseg_jax.convert` both ways, ending in a file that sam2's own builder loads strictly; the one
error type of checkpoint loading (`CheckpointError`), which names the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from robotseg_jax import convert as convert_cli
from robotseg_jax.checkpoints import convert
from robotseg_jax.checkpoints.torch_keys import CheckpointError, CheckpointMismatchError
from robotseg_jax.modeling.config import REFERENCE_YAML, get_model_config

pytestmark = pytest.mark.reference

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_official_checkpoint_round_trip_through_the_cli(sam21_checkpoint_reference, sam21_checkpoint, tmp_path, capsys):
    reference, official = sam21_checkpoint_reference, sam21_checkpoint

    orbax_dir, back = tmp_path / "orbax", tmp_path / "back.pt"
    assert convert_cli.main(["--from-torch", official, "--model", "sam2.1_hiera_t", "--out", str(orbax_dir)]) == 0
    assert "38,962,498 parameters" in capsys.readouterr().out
    assert os.path.exists(orbax_dir / "model.json")
    assert convert_cli.main(["--to-torch", "--model", "sam2.1_hiera_t", "--from", str(orbax_dir), "--out", str(back)]) == 0

    from sam2.build_sam import build_sam2

    # build_sam2 loads the file with strict key checking (missing or unexpected keys raise).
    rebuilt = build_sam2(REFERENCE_YAML["sam2.1_hiera_t"], ckpt_path=str(back), device="cpu", mode="eval")
    rebuilt_state = rebuilt.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(rebuilt_state[key], value), key


def test_cli_rejects_a_checkpoint_of_another_size(sam21_checkpoint, tmp_path):
    with pytest.raises(CheckpointMismatchError, match="pass --model sam2.1_hiera_t"):
        convert_cli.main(
            ["--from-torch", sam21_checkpoint, "--model", "sam2.1_hiera_s", "--out", str(tmp_path / "out")]
        )


def test_cli_reads_a_bare_state_dict_and_rejects_other_objects(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        convert.load_torch_state_dict(tmp_path / "absent.pt")
    torch.save({"model": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state_dict"):
        convert.load_torch_state_dict(tmp_path / "list.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "bare.pt")
    assert np.array_equal(convert.load_torch_state_dict(tmp_path / "bare.pt")["w"], np.ones(2, np.float32))


def test_load_checkpoint_raises_one_error_type_that_names_the_file(tmp_path):
    config = get_model_config("sam2.1_hiera_t")
    absent = tmp_path / "absent.pt"
    with pytest.raises(CheckpointError) as info:
        convert.load_checkpoint(absent, config)
    assert str(absent) in str(info.value) and "No checkpoint" in str(info.value)

    bad = tmp_path / "bad.pt"
    bad.write_text("x\n")  # echo x > bad.pt
    with pytest.raises(CheckpointError) as info:
        convert.load_checkpoint(bad, config)
    assert str(bad) in str(info.value) and "not a PyTorch checkpoint" in str(info.value)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty or truncated") as info:
        convert.load_checkpoint(empty, config)
    assert str(empty) in str(info.value)

    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.ones(2)}}, other)
    with pytest.raises(CheckpointMismatchError) as info:
        convert.load_checkpoint(other, config)
    assert f"Checkpoint {other} does not match the model sam2.1_hiera_t" in str(info.value)
    assert "unexpected keys (1): w" in str(info.value) and "missing keys" in str(info.value)

    orbax_dir = tmp_path / "orbax"
    orbax_dir.mkdir()
    with pytest.raises(CheckpointError, match="is not a robotseg_jax checkpoint"):
        convert.load_checkpoint(orbax_dir, config)
    (orbax_dir / "model.json").write_text(json.dumps({"model": "sam2.1_hiera_s"}))
    with pytest.raises(CheckpointError, match="holds a sam2.1_hiera_s checkpoint, not sam2.1_hiera_t: pass --model"):
        convert.load_checkpoint(orbax_dir, config)


def test_command_line_reports_a_bad_checkpoint_without_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_text("x\n")
    command = [sys.executable, "-m", "robotseg_jax.convert", "--from-torch", str(bad), "--model", "sam2.1_hiera_t",
               "--out", str(tmp_path / "out")]
    run = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO_ROOT)
    assert run.returncode == 2
    assert "error:" in run.stderr and str(bad) in run.stderr and "Traceback" not in run.stderr
