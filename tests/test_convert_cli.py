"""`python -m robotseg_jax.convert` both ways, ending in a file that sam2's own builder loads strictly."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from robotseg_jax import convert as convert_cli
from robotseg_jax.checkpoints import convert
from robotseg_jax.checkpoints.torch_keys import CheckpointMismatchError
from robotseg_jax.modeling.config import REFERENCE_YAML
from tests.reference import build_reference


def test_official_checkpoint_round_trip_through_the_cli(tmp_path, capsys):
    reference = build_reference("sam2.1_hiera_t", image_size=128, seed=3)
    official = tmp_path / "sam2.1_hiera_tiny.pt"
    convert.save_torch_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, official)

    orbax_dir, back = tmp_path / "orbax", tmp_path / "back.pt"
    assert convert_cli.main(["--from-torch", str(official), "--model", "sam2.1_hiera_t", "--out", str(orbax_dir)]) == 0
    assert "38,962,498 parameters" in capsys.readouterr().out
    assert os.path.exists(orbax_dir / "model.json")
    assert convert_cli.main(["--to-torch", "--model", "sam2.1_hiera_t", "--from", str(orbax_dir), "--out", str(back)]) == 0

    from sam2.build_sam import build_sam2

    # build_sam2 loads the file with strict key checking (missing or unexpected keys raise).
    rebuilt = build_sam2(REFERENCE_YAML["sam2.1_hiera_t"], ckpt_path=str(back), device="cpu", mode="eval")
    rebuilt_state = rebuilt.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(rebuilt_state[key], value), key


def test_cli_rejects_a_checkpoint_of_another_size(tmp_path):
    reference = build_reference("sam2.1_hiera_t", image_size=128)
    path = tmp_path / "tiny.pt"
    convert.save_torch_state_dict({k: v.numpy() for k, v in reference.state_dict().items()}, path)
    with pytest.raises(CheckpointMismatchError, match="pass --model sam2.1_hiera_t"):
        convert_cli.main(["--from-torch", str(path), "--model", "sam2.1_hiera_s", "--out", str(tmp_path / "out")])


def test_cli_reads_a_bare_state_dict_and_rejects_other_objects(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        convert.load_torch_state_dict(tmp_path / "absent.pt")
    torch.save({"model": [1, 2]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a state_dict"):
        convert.load_torch_state_dict(tmp_path / "list.pt")
    torch.save({"w": torch.ones(2)}, tmp_path / "bare.pt")
    assert np.array_equal(convert.load_torch_state_dict(tmp_path / "bare.pt")["w"], np.ones(2, np.float32))
