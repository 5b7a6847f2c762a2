"""DINOv3 checkpoints: official facebookresearch/dinov3 `.pth` state dicts <-> Flax params, and Hugging Face
transformers `DINOv3ViTModel` state dicts <-> official names.

Official names map to the Flax tree by the project's one rule table (`checkpoints.torch_keys`), because
`teacher.dinov3` uses the official attribute names. Two entries need DINOv3-specific handling:
- `blocks.N.attn.qkv.bias_mask` is a buffer (1 for q and v, 0 for k) that the model applies as a constant; on
  load it is checked to be that pattern, on export it is written back.
- `local_cls_norm.{weight,bias}` (ViT-L/16 SAT-493M) normalises local crops in training only; it is dropped on load.
Missing, unexpected and mis-shaped keys raise `CheckpointMismatchError`, which lists them.

Hugging Face names go through `HF_RENAMES` plus three structural rules: the fused qkv is split into q/k/v
projections (HF has no key bias, which is consistent with the bias mask), `mask_token` gains a token axis, and
HF keeps no `periods` buffer (its `inv_freq` is rebuilt from `rope_theta`), so `hf_to_official` rebuilds
`periods` from the config.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from robotseg_jax.checkpoints.torch_keys import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    _as_numpy,
    flax_to_torch,
    torch_to_flax,
)
from robotseg_jax.teacher.dinov3 import (
    VARIANTS,
    DinoV3Config,
    param_shapes,
    rope_periods,
)

TRAINING_ONLY_KEYS = re.compile(r"^local_cls_norm\.(weight|bias)$")
_BIAS_MASK = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.bias_mask$")
_QKV = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$")
_HF_QKV = re.compile(r"^model\.layer\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)$")

# (official, Hugging Face) names of the entries that are pure renames; {i} is a block index, {n} 1 or 2, {p}
# weight or bias. SwiGLU's w2 and the MLP's fc1 both become HF `up_proj`, so the table depends on the FFN type.
_COMMON_RENAMES = (
    ("cls_token", "embeddings.cls_token"),
    ("storage_tokens", "embeddings.register_tokens"),
    ("patch_embed.proj.{p}", "embeddings.patch_embeddings.{p}"),
    ("blocks.{i}.norm{n}.{p}", "model.layer.{i}.norm{n}.{p}"),
    ("blocks.{i}.attn.proj.{p}", "model.layer.{i}.attention.o_proj.{p}"),
    ("blocks.{i}.ls{n}.gamma", "model.layer.{i}.layer_scale{n}.lambda1"),
    ("norm.{p}", "norm.{p}"),
)
HF_RENAMES = {
    "mlp": _COMMON_RENAMES + (
        ("blocks.{i}.mlp.fc1.{p}", "model.layer.{i}.mlp.up_proj.{p}"),
        ("blocks.{i}.mlp.fc2.{p}", "model.layer.{i}.mlp.down_proj.{p}"),
    ),
    "swiglu": _COMMON_RENAMES + (
        ("blocks.{i}.mlp.w1.{p}", "model.layer.{i}.mlp.gate_proj.{p}"),
        ("blocks.{i}.mlp.w2.{p}", "model.layer.{i}.mlp.up_proj.{p}"),
        ("blocks.{i}.mlp.w3.{p}", "model.layer.{i}.mlp.down_proj.{p}"),
    ),
}
_PLACEHOLDERS = {"i": r"(?P<i>\d+)", "n": r"(?P<n>[12])", "p": r"(?P<p>weight|bias)"}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template)  # literal, name, literal, name, ...
    return re.compile("".join(_PLACEHOLDERS[part] if k % 2 else re.escape(part) for k, part in enumerate(parts)))


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str | None:
    """Maps `key` through the first (source, target) template pair whose source matches it, else None."""
    for source, target in table:
        if match := _template_regex(source).fullmatch(key):
            return target.format(**match.groupdict())
    return None


class ArchitectureMismatchError(CheckpointError):
    """A checkpoint holds a different ViT than the one asked for; the message names both."""


def describe(config: DinoV3Config) -> str:
    """A one-line summary of an architecture, with its variant name when it is a released one."""
    name = next((n for n, c in VARIANTS.items() if _signature(c) == _signature(config)), None)
    text = (
        f"embed_dim {config.embed_dim}, depth {config.depth}, {config.num_heads} heads, "
        f"{config.ffn_layer} FFN of width {config.ffn_hidden_dim}, {config.n_storage_tokens} storage tokens"
    )
    return f"{text} (that is {name})" if name else text


def _signature(config: DinoV3Config) -> tuple:
    return (config.embed_dim, config.depth, config.num_heads, config.ffn_layer, config.ffn_hidden_dim,
            config.n_storage_tokens, config.patch_size)


def infer_config(state_dict: Mapping[str, Any]) -> DinoV3Config:
    """Reads the architecture off an official state dict; the head count comes from the length of
    `rope_embed.periods` (head_dim / 4). Raises CheckpointMismatchError when an entry it needs is absent."""
    swiglu = "blocks.0.mlp.w1.weight" in state_dict
    hidden_key = "blocks.0.mlp.w1.weight" if swiglu else "blocks.0.mlp.fc1.weight"
    needed = ("cls_token", "storage_tokens", "patch_embed.proj.weight", "rope_embed.periods", hidden_key)
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise CheckpointMismatchError(missing=missing, context="(is it a DINOv3 ViT state dict?)")
    embed_dim = int(np.shape(state_dict["cls_token"])[-1])
    hidden = int(np.shape(state_dict[hidden_key])[0])
    return DinoV3Config(
        embed_dim=embed_dim,
        depth=len({m.group(1) for k in state_dict if (m := re.match(r"^blocks\.(\d+)\.", k))}),
        num_heads=embed_dim // (4 * int(np.shape(state_dict["rope_embed.periods"])[0])),
        # SwiGLU rounds its width; ratio = 3/2 * width / dim gives the width back exactly.
        ffn_ratio=hidden * (1.5 if swiglu else 1.0) / embed_dim,
        ffn_layer="swiglu" if swiglu else "mlp",
        patch_size=int(np.shape(state_dict["patch_embed.proj.weight"])[-1]),
        n_storage_tokens=int(np.shape(state_dict["storage_tokens"])[1]),
    )


def check_architecture(state_dict: Mapping[str, Any], config: DinoV3Config, source: str = "checkpoint") -> None:
    """Raises ArchitectureMismatchError, naming both architectures, when the state dict holds another ViT."""
    found = infer_config(state_dict)
    if _signature(found) != _signature(config):
        raise ArchitectureMismatchError(f"{source} holds a ViT with {describe(found)}; the model asked for has "
                                        f"{describe(config)}")


def _expected_bias_mask(size: int) -> np.ndarray:
    third = size // 3
    return np.concatenate([np.ones(third), np.zeros(third), np.ones(third)]).astype(np.float32)


def official_to_flax(state_dict: Mapping[str, Any], config: DinoV3Config) -> dict:
    """Official DINOv3 state dict -> Flax params of `DinoVisionTransformer(config)`."""
    weights = {k: v for k, v in state_dict.items() if not _BIAS_MASK.match(k) and not TRAINING_ONLY_KEYS.match(k)}
    masks = {k: _as_numpy(v) for k, v in state_dict.items() if _BIAS_MASK.match(k)}
    expected = {f"blocks.{i}.attn.qkv.bias_mask" for i in range(config.depth)}
    missing, unexpected = sorted(expected - set(masks)), sorted(set(masks) - expected)
    mismatched = [(k, masks[k].shape, (3 * config.embed_dim,)) for k in sorted(expected & set(masks))
                  if masks[k].shape != (3 * config.embed_dim,)]
    wrong_values = [k for k in sorted(expected & set(masks)) if masks[k].shape == (3 * config.embed_dim,)
                    and not np.array_equal(masks[k], _expected_bias_mask(3 * config.embed_dim))]
    try:
        params = torch_to_flax(weights, param_shapes(config))
    except CheckpointMismatchError as e:
        missing, unexpected, mismatched = e.missing + missing, e.unexpected + unexpected, e.mismatched + mismatched
    context = f"(DINOv3 with {describe(config)})"
    if wrong_values:
        context += f"; these bias masks are not the key-bias mask 1..1 0..0 1..1: {', '.join(wrong_values)}"
    if missing or unexpected or mismatched or wrong_values:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context=context)
    return params


def flax_to_official(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax params -> official DINOv3 state dict (numpy), including the qkv bias-mask buffers."""
    state_dict = flax_to_torch(params)
    for key in [k for k in state_dict if _QKV.match(k) and k.endswith(".bias")]:
        state_dict[key + "_mask"] = _expected_bias_mask(state_dict[key].shape[0])
    return state_dict


def official_to_hf(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Official names -> `DINOv3ViTModel.state_dict()` names (the transformers 5 layout, `model.layer.N`)."""
    table = HF_RENAMES["swiglu" if "blocks.0.mlp.w1.weight" in state_dict else "mlp"]
    out, unknown = {}, []
    for key, value in state_dict.items():
        value = _as_numpy(value)
        if key == "mask_token":
            out["embeddings.mask_token"] = value.reshape(1, 1, -1)
        elif match := _QKV.match(key):
            block, leaf = match.groups()
            for part, tensor in zip("qkv", np.split(value, 3, axis=0)):
                if not (leaf == "bias" and part == "k"):  # HF has no key bias: the bias mask zeroes it
                    out[f"model.layer.{block}.attention.{part}_proj.{leaf}"] = tensor
        elif _BIAS_MASK.match(key) or key == "rope_embed.periods" or TRAINING_ONLY_KEYS.match(key):
            continue  # constants HF rebuilds (the bias mask, inv_freq) and a training-only norm
        elif renamed := _rename(key, table):
            out[renamed] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointMismatchError(unexpected=unknown, context="(no Hugging Face name for these official keys)")
    return out


def hf_to_official(state_dict: Mapping[str, Any], config: DinoV3Config) -> dict[str, np.ndarray]:
    """`DINOv3ViTModel` state dict -> official names. `config` supplies what HF does not store: the head count
    and RoPE base that define `rope_embed.periods`. Hub files written before transformers 5 name the blocks
    `layer.N` instead of `model.layer.N`; both are read."""
    state_dict = {("model." + k if k.startswith("layer.") else k): v for k, v in state_dict.items()}
    table = [(hf, official) for official, hf in
             HF_RENAMES["swiglu" if "model.layer.0.mlp.gate_proj.weight" in state_dict else "mlp"]]
    out, qkv, unknown = {}, {}, []
    for key, value in state_dict.items():
        value = _as_numpy(value)
        if key == "embeddings.mask_token":
            out["mask_token"] = value.reshape(1, -1)
        elif match := _HF_QKV.match(key):
            block, part, leaf = match.groups()
            qkv.setdefault((block, leaf), {})[part] = value
        elif renamed := _rename(key, table):
            out[renamed] = value
        else:
            unknown.append(key)
    missing = []
    for (block, leaf), parts in qkv.items():
        if leaf == "bias" and "q" in parts:
            parts.setdefault("k", np.zeros_like(parts["q"]))  # masked by the bias mask, so any value acts alike
            out[f"blocks.{block}.attn.qkv.bias_mask"] = _expected_bias_mask(3 * parts["q"].shape[0])
        missing += [f"model.layer.{block}.attention.{p}_proj.{leaf}" for p in "qkv" if p not in parts]
        if all(p in parts for p in "qkv"):
            out[f"blocks.{block}.attn.qkv.{leaf}"] = np.concatenate([parts[p] for p in "qkv"], axis=0)
    if unknown or missing:
        raise CheckpointMismatchError(missing, unknown, context="(Hugging Face DINOv3ViTModel keys)")
    out["rope_embed.periods"] = np.asarray(rope_periods(config.head_dim, config.rope_base))
    return out


def is_hf_state_dict(state_dict: Mapping[str, Any]) -> bool:
    return "embeddings.cls_token" in state_dict


def read_state_dict(path: str) -> dict[str, Any]:
    """Reads a `.pth`/`.pt` file (torch.load, weights only; needs torch) or a `.safetensors` file (no torch).
    Raises CheckpointNotFoundError (a FileNotFoundError) without a file, CheckpointError for a file it cannot read."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a readable .safetensors file: {e}") from e
    try:
        import torch
    except ImportError as e:
        raise CheckpointError(
            f"reading {path} needs PyTorch (torch.load, pip install torch); a .safetensors file does not"
        ) from e
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint of tensors (torch.load cannot read it: {e})") from e
    if not isinstance(state_dict, Mapping):
        raise CheckpointMismatchError(context=f"({path} holds a {type(state_dict).__name__}, not a state dict)")
    return dict(state_dict)


def load_params(path: str, config: DinoV3Config) -> dict:
    """Flax params for `config` from an official or a Hugging Face DINOv3 checkpoint file. Raises
    FileNotFoundError, ArchitectureMismatchError (the file holds another ViT) or CheckpointMismatchError."""
    state_dict = read_state_dict(path)
    if is_hf_state_dict(state_dict):
        state_dict = hf_to_official(state_dict, config)
    check_architecture(state_dict, config, source=path)
    return official_to_flax(state_dict, config)
