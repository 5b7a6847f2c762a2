"""Official PyTorch checkpoints <-> Flax params <-> orbax directories.

A PyTorch checkpoint is `{"model": state_dict}` as Meta releases SAM 2.1 (and RobotSeg releases robotseg.pt).
An orbax checkpoint directory holds the params and a `model.json` naming the model, so it cannot be loaded into
the wrong architecture by accident. `init_from_sam2` starts RobotSeg from a SAM 2.1 checkpoint, as its training
does (the original loads `sam2.1_hiera_tiny.pt` with strict=False): only RobotSeg's new parameters are
initialised fresh.

Every loading error is a `CheckpointError` (a ValueError) whose message names the file and the problem: no file
(`CheckpointNotFoundError`, also a FileNotFoundError), a file that is not a checkpoint, or a checkpoint of
another model (`CheckpointMismatchError`, which lists the keys and names the model the checkpoint looks like).
CLIs catch that one type.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from robotseg_jax.checkpoints.torch_init import torch_default_init
from robotseg_jax.checkpoints.torch_keys import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    flax_path_to_torch_key,
    torch_to_flax,
)
from robotseg_jax.modeling.config import MODEL_CONFIGS, RobotSegConfig, SAM2Config
from robotseg_jax.modeling.robotseg import build_model

_MODEL_FILE = "model.json"
# Training from scratch initialises at this input size (any size gives the same param shapes; small traces fast).
INIT_IMAGE_SIZE = 64
_PARAMS_DIR = "params"

# The state_dict keys RobotSeg adds to SAM 2.1 (SEMA's structure branch in every memory-attention layer, the class
# token table, RPG's no-memory embedding); no SAM 2.1 key is renamed or removed, so a SAM 2.1 checkpoint lacks
# exactly these.
ROBOTSEG_NEW_KEYS = (
    r"^memory_attention\.layers\.\d+\.(structure_strength$|cross_attn_structure\.|ms_pyramid\.|structure_head\.)",
    r"^sam_mask_decoder\.robot_token_embedding\.weight$",
    r"^robot_prompt_generator\.no_memory_prompt_embeddings_fg\.weight$",
)
_NEW_KEY = re.compile("|".join(ROBOTSEG_NEW_KEYS))


def params_template(config: SAM2Config) -> dict:
    """The shapes and dtypes of the model's params (`jax.ShapeDtypeStruct` leaves), without computing anything."""
    return jax.tree.map(lambda leaf: leaf, _cached_template(config))  # fresh containers around the cached leaves


@functools.lru_cache(maxsize=8)
def _cached_template(config: SAM2Config) -> dict:
    # Tracing the whole model takes seconds, and every conversion of a checkpoint needs the template.
    model = build_model(config)
    images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), images)["params"]


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a `.pt` file (`{"model": state_dict}` or a bare state_dict) into float32 numpy arrays. Raises
    CheckpointNotFoundError without a file, CheckpointError for a file that is not a PyTorch state dict."""
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"No checkpoint at {path}")
    try:
        import torch  # only needed to read PyTorch files
    except ImportError as err:
        raise CheckpointError(
            f"reading {path} needs PyTorch (pip install torch); or convert it to an orbax directory where PyTorch "
            "is installed: python -m robotseg_jax.convert --from-torch ..."
        ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # any bytes that are not a pickle, or a pickle of more than tensors
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint of tensors (torch.load with weights_only=True cannot read it)"
        ) from err
    except EOFError as err:
        raise CheckpointError(f"{path} is empty or truncated, not a PyTorch checkpoint") from err
    except (OSError, RuntimeError, ValueError) as err:  # unreadable, or a damaged zip archive
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {err}") from err
    state_dict = obj["model"] if isinstance(obj, Mapping) and "model" in obj else obj
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(state_dict).__name__}, not a state_dict or {{'model': state_dict}}"
        )
    not_tensors = sorted(str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{path} is not a state_dict: these entries are not tensors: {', '.join(not_tensors)}")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in state_dict.items()}


def save_torch_state_dict(state_dict: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Writes `{"model": state_dict}` as Meta's releases do, loadable by `sam2.build_sam.build_sam2(ckpt_path=...)`."""
    import torch

    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}}, path)


def guess_model_name(state_dict: Mapping[str, Any]) -> str | None:
    """The named model whose trunk and family (SAM 2, SAM 2.1, RobotSeg) match the checkpoint's, for error
    messages."""
    blocks = {int(m.group(1)) for k in state_dict if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k))}
    embed = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if embed is None or not blocks:
        return None
    if any(_NEW_KEY.search(k) for k in state_dict):
        family = "robotseg"
    else:
        family = "sam2.1" if "no_obj_embed_spatial" in state_dict else "sam2_"
    for name, cfg in MODEL_CONFIGS.items():
        same_trunk = cfg.hiera.embed_dim == embed.shape[0] and sum(cfg.hiera.stages) == max(blocks) + 1
        if same_trunk and name.startswith(family):
            return name
    return None


def torch_to_params(
    state_dict: Mapping[str, Any], config: SAM2Config, allow_missing: Iterable[str] = (), source: str = ""
) -> dict:
    """Flax params of `config`'s model from a PyTorch state_dict, through the one mapping (torch_keys.py).
    `source`, the file the state_dict came from, is named in a CheckpointMismatchError."""
    try:
        return torch_to_flax(state_dict, params_template(config), allow_missing=allow_missing, context=f"{config.name}")
    except CheckpointMismatchError as err:
        raise _explained(err, state_dict, config).with_source(source) from None


def _explained(err: CheckpointMismatchError, state_dict: Mapping[str, Any], config: SAM2Config):
    """The mismatch with a hint when the checkpoint is recognisably another one: SAM 2.1 for RobotSeg, or another
    named model."""
    only_new_missing = err.missing and all(_NEW_KEY.search(k) for k in err.missing)
    if isinstance(config, RobotSegConfig) and only_new_missing and not (err.unexpected or err.mismatched):
        hint = "a SAM 2.1 checkpoint: start RobotSeg from it with init_from_sam2, CLI --init-from-sam2"
        return CheckpointMismatchError(err.missing, (), (), context=f"{config.name} ({hint})")
    guess = guess_model_name(state_dict)
    if guess is not None and guess != config.name:
        return CheckpointMismatchError(
            err.missing, err.unexpected, err.mismatched,
            context=f"{config.name} (this checkpoint looks like {guess}: pass --model {guess})",
        )
    return err


def init_from_sam2(
    state_dict: Mapping[str, Any], config: RobotSegConfig, rng: jax.Array, source: str = ""
) -> dict:
    """RobotSeg params from a SAM 2.1 state_dict: every SAM 2.1 key is loaded and exactly RobotSeg's new keys
    (`ROBOTSEG_NEW_KEYS`) are initialised as the original initialises them: PyTorch's defaults
    (`torch_default_init`), alpha = `config.structure_strength_init`, and one structure branch deep-copied into all
    memory-attention layers (the original's `get_clones`), so the branches start identical.

    The checkpoint must be SAM 2.1's: any RobotSeg key in it, or any other missing or unexpected key, is a
    CheckpointMismatchError (naming `source`, the file of the state_dict, when given).
    """
    if not isinstance(config, RobotSegConfig):
        raise TypeError(f"init_from_sam2 builds a RobotSeg model; {config.name} is not one")
    present = sorted(k for k in state_dict if _NEW_KEY.search(k))
    if present:
        raise CheckpointMismatchError(
            unexpected=present, context=f"{config.name} (init_from_sam2 takes a SAM 2.1 checkpoint; load a RobotSeg "
            "checkpoint with torch_to_params)", source=source,
        )
    template = traverse_util.flatten_dict(params_template(config))
    new = {path: leaf for path, leaf in template.items() if _NEW_KEY.search(flax_path_to_torch_key(path))}
    alpha = {p for p in new if p[-1] == "structure_strength"}  # a module constant, no PyTorch default
    numpy_rng = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist())
    fresh = torch_default_init(
        {p: leaf for p, leaf in new.items() if p not in alpha and _first_layer(p) == p}, numpy_rng
    )
    for path, leaf in new.items():
        if path in alpha:
            fresh[path] = np.full(leaf.shape, config.structure_strength_init, np.float32)
        else:
            fresh.setdefault(path, fresh[_first_layer(path)].copy())
    merged = traverse_util.unflatten_dict({**template, **fresh})
    try:
        return torch_to_flax(state_dict, merged, allow_missing=ROBOTSEG_NEW_KEYS, context=f"{config.name} from SAM 2.1")
    except CheckpointMismatchError as err:
        raise err.with_source(source) from None


def _first_layer(path: tuple[str, ...]) -> tuple[str, ...]:
    """`memory_attention/layers_i/...` -> `memory_attention/layers_0/...`: the structure branch every layer copies."""
    if path[0] == "memory_attention" and re.fullmatch(r"layers_\d+", path[1]):
        return (path[0], "layers_0", *path[2:])
    return path


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
    """Reads an orbax checkpoint written by `save_params`: (params, model name). Checks the model if given.
    Raises CheckpointNotFoundError without `model.json`, CheckpointError for another model, an unreadable
    `model.json` or unreadable params."""
    model_name = _saved_model_name(directory, config)
    return _restore(os.path.join(os.path.abspath(directory), _PARAMS_DIR)), model_name


def _saved_model_name(directory: str | os.PathLike, config: SAM2Config | None) -> str:
    """The model named by `model.json` of an orbax checkpoint directory, checked against `config` if given."""
    directory = os.path.abspath(directory)
    meta_path = os.path.join(directory, _MODEL_FILE)
    if not os.path.exists(meta_path):
        raise CheckpointNotFoundError(f"{directory} is not a robotseg_jax checkpoint (no {_MODEL_FILE})")
    try:
        with open(meta_path) as f:
            model_name = json.load(f)["model"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{meta_path} is unreadable (expected {{\"model\": name}}): {err!r}") from err
    if config is not None and config.name != model_name:
        raise CheckpointError(
            f"{directory} holds a {model_name} checkpoint, not {config.name}: pass --model {model_name}"
        )
    params_dir = os.path.join(directory, _PARAMS_DIR)
    if not os.path.isdir(params_dir):
        raise CheckpointError(f"{directory} is an incomplete robotseg_jax checkpoint: {params_dir} is missing")
    return model_name


def _restore(params_dir: str) -> dict:
    try:
        return ocp.StandardCheckpointer().restore(params_dir)
    except (OSError, ValueError) as err:  # a damaged or half-written orbax directory
        raise CheckpointError(f"{params_dir} is not a readable orbax checkpoint: {err}") from err


def load_checkpoint(path: str | os.PathLike, config: SAM2Config) -> dict:
    """Params of `config`'s model from an official `.pt` file or an orbax directory written by `save_params`.
    Raises CheckpointError, naming the file: no file, not a checkpoint, or the checkpoint of another model.

    The params do not depend on `config.image_size`, so one checkpoint serves every input size."""
    if os.path.isdir(path):
        params, _ = load_params(path, config)
        return params
    return torch_to_params(load_torch_state_dict(path), config, source=str(path))


def initial_params(
    config: SAM2Config,
    checkpoint: str | os.PathLike | None,
    seed: int,
    shardings: Callable[[dict], Any] | None = None,
) -> dict:
    """Training's starting params: random (`checkpoint` None), an orbax directory, or an official `.pt`. A SAM 2.1
    `.pt` for a RobotSeg model initialises it as RobotSeg's training does (`init_from_sam2`). Loading errors are
    CheckpointErrors, as in `load_checkpoint`.

    shardings: maps the params' abstract tree (ShapeDtypeStructs) to their shardings. A random init is then one
    program over those devices, each computing only its own shards, with the same values (JAX's partitionable
    threefry draws do not depend on the sharding); every process of a multi-process run compiles that same
    program, so it can share it. Loaded params are returned unplaced."""
    if checkpoint is None:
        small = dataclasses.replace(config, image_size=INIT_IMAGE_SIZE)
        images = jnp.zeros((1, small.image_size, small.image_size, 3), jnp.float32)
        init = lambda key: build_model(small).init(key, images)["params"]
        key = jax.random.key(seed)
        out_shardings = None if shardings is None else shardings(jax.eval_shape(init, key))
        return jax.jit(init, out_shardings=out_shardings)(key)
    if os.path.isdir(checkpoint):
        return load_params(checkpoint, config)[0]
    state_dict = load_torch_state_dict(checkpoint)
    if isinstance(config, RobotSegConfig) and not any(_NEW_KEY.search(k) for k in state_dict):
        return init_from_sam2(state_dict, config, jax.random.key(seed), source=str(checkpoint))
    return torch_to_params(state_dict, config, source=str(checkpoint))
