"""Official PyTorch checkpoints <-> Flax params <-> orbax directories.

A PyTorch checkpoint is `{"model": state_dict}` as Meta releases SAM 2.1 (and RobotSeg releases robotseg.pt).
An orbax checkpoint directory holds the params and a `model.json` naming the model, so it cannot be loaded into
the wrong architecture by accident.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from robotseg_jax.checkpoints.torch_keys import CheckpointMismatchError, torch_to_flax
from robotseg_jax.modeling.config import MODEL_CONFIGS, SAM2Config
from robotseg_jax.modeling.sam2 import SAM2Model

_MODEL_FILE = "model.json"
_PARAMS_DIR = "params"


def params_template(config: SAM2Config) -> dict:
    """The shapes and dtypes of the model's params, without computing anything."""
    model = SAM2Model(config)
    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), images)["params"]


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `.pt` file (`{"model": state_dict}` or a bare state_dict) into float32 numpy arrays."""
    import torch  # only needed to read PyTorch files

    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state_dict = obj["model"] if isinstance(obj, Mapping) and "model" in obj else obj
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, not a state_dict or {{'model': state_dict}}")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state_dict.items()}


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes `{"model": state_dict}` as Meta's releases do, loadable by `sam2.build_sam.build_sam2(ckpt_path=...)`."""
    import torch

    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}}, path)


def guess_model_name(state_dict: Mapping[str, Any]) -> str | None:
    """The named model whose trunk matches the checkpoint's (embed dim and block count), for error messages."""
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    embed = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if embed is None or not blocks:
        return None
    for name, cfg in MODEL_CONFIGS.items():
        if cfg.hiera.embed_dim == embed.shape[0] and sum(cfg.hiera.stages) == max(blocks) + 1:
            is_2_1 = "no_obj_embed_spatial" in state_dict
            if name.startswith("sam2.1") == is_2_1:
                return name
    return None


def torch_to_params(
    state_dict: Mapping[str, Any], config: SAM2Config, allow_missing: Iterable[str] = ()
) -> dict:
    """Flax params of `config`'s model from a PyTorch state_dict, through the one mapping (torch_keys.py)."""
    try:
        return torch_to_flax(state_dict, params_template(config), allow_missing=allow_missing, context=f"{config.name}")
    except CheckpointMismatchError as err:
        guess = guess_model_name(state_dict)
        if guess is not None and guess != config.name:
            raise CheckpointMismatchError(
                err.missing, err.unexpected, err.mismatched,
                context=f"{config.name} (this checkpoint looks like {guess}: pass --model {guess})",
            ) from None
        raise


def save_params(directory: str | os.PathLike, params: Any, model_name: str) -> None:
    """Writes params as an orbax checkpoint plus `model.json`."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, _PARAMS_DIR), jax.tree.map(np.asarray, params), force=True)
    checkpointer.wait_until_finished()
    with open(os.path.join(directory, _MODEL_FILE), "w") as f:
        json.dump({"model": model_name}, f)


def load_params(directory: str | os.PathLike, config: SAM2Config | None = None) -> tuple[dict, str]:
    """Reads an orbax checkpoint written by `save_params`: (params, model name). Checks the model if given."""
    directory = os.path.abspath(directory)
    meta_path = os.path.join(directory, _MODEL_FILE)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"{directory} is not a robotseg_jax checkpoint (no {_MODEL_FILE})")
    with open(meta_path) as f:
        model_name = json.load(f)["model"]
    if config is not None and config.name != model_name:
        raise ValueError(f"{directory} holds a {model_name} checkpoint, not {config.name}")
    restored = ocp.StandardCheckpointer().restore(os.path.join(directory, _PARAMS_DIR))
    return restored, model_name



def load_checkpoint(path: str | os.PathLike, config: SAM2Config) -> dict:
    """Params of `config`'s model from an official `.pt` file or an orbax directory written by `save_params`.

    The params do not depend on `config.image_size`, so one checkpoint serves every input size."""
    if os.path.isdir(path):
        params, _ = load_params(path, config)
        return params
    return torch_to_params(load_torch_state_dict(path), config)
