"""The one mapping between PyTorch state_dict keys and Flax param paths: every checkpoint conversion, in either
direction, goes through it.

Flax modules in `robotseg_jax.modeling` carry the PyTorch attribute names, with list index `i` written `name_i`,
so the mapping is a short table of rules rather than a list of keys:

| Flax leaf                     | PyTorch key                      | array transform                          |
|-------------------------------|----------------------------------|------------------------------------------|
| `a/b_3/c/kernel`, 2-D (Dense) | `a.b.3.c.weight` `[out, in]`     | transpose                                |
| `.../kernel`, 4-D (Conv)      | `...weight` `[out, in, kh, kw]`  | `[kh, kw, in, out]`                      |
| `.../kernel`, 4-D, ConvTranspose (`CONV_TRANSPOSE_KEYS`) | `...weight` `[in, out, kh, kw]` | `[kh, kw, in, out]` |
| `.../scale` (LayerNorm, GroupNorm) | `...weight`                 | none                                     |
| `.../embedding` (Embed)       | `...weight`                      | none                                     |
| any other leaf name           | the same name                    | none                                     |

Both directions go through `flax_path_to_torch_key`, so they cannot disagree. Missing, unexpected and mis-shaped
keys raise `CheckpointMismatchError`, which lists them; nothing is filled in silently.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from robotseg_jax.errors import UserError

Params = Mapping[str, Any]

# State-dict entries that are buffers, not parameters: converted like params but frozen in training and left out
# of parameter counts (sam2 reports 38,962,498 params for Hiera-T without them).
BUFFER_KEYS = ("sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",)

# PyTorch ConvTranspose2d weights are laid out [in, out, kh, kw], unlike Conv2d's [out, in, kh, kw].
CONV_TRANSPOSE_KEYS = re.compile(r"(^|\.)output_upscaling\.\d+\.weight$")

_INDEXED = re.compile(r"^(.+)_(\d+)$")
_TORCH_WEIGHT_ALIASES = ("kernel", "scale", "embedding")


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be loaded into the model asked for: the file is missing, is not a checkpoint, or holds
    another model. The message names the file (where one is known) and the problem."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the path given (also a FileNotFoundError)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the model: lists every missing, unexpected and mis-shaped key. `source` names the
    file it came from, when known."""

    def __init__(self, missing=(), unexpected=(), mismatched=(), context: str = "", source: str = ""):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        self.context, self.source = context, str(source)
        checkpoint = f"Checkpoint {self.source}" if self.source else "Checkpoint"
        lines = [f"{checkpoint} does not match the model{(' ' + context) if context else ''}:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        for key, got, want in self.mismatched:
            lines.append(f"  shape mismatch for {key}: checkpoint {tuple(got)}, model {tuple(want)}")
        super().__init__("\n".join(lines))

    def with_source(self, source: str | os.PathLike) -> CheckpointMismatchError:
        """The same error, naming the checkpoint file `source`."""
        return CheckpointMismatchError(self.missing, self.unexpected, self.mismatched, self.context, str(source))


def flax_path_to_torch_key(path: Iterable[str]) -> str:
    """`("image_encoder", "trunk", "blocks_0", "attn", "qkv", "kernel")` -> `image_encoder.trunk.blocks.0.attn.qkv.weight`."""
    *modules, leaf = list(path)
    parts = []
    for name in modules:
        match = _INDEXED.match(name)
        parts.extend(match.groups() if match else (name,))
    parts.append("weight" if leaf in _TORCH_WEIGHT_ALIASES else leaf)
    return ".".join(parts)


def _to_torch_layout(key: str, leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 0, 1) if CONV_TRANSPOSE_KEYS.search(key) else value.transpose(3, 2, 0, 1)
    return value


def _to_flax_layout(key: str, leaf: str, value: np.ndarray) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    if leaf == "kernel" and value.ndim == 4:
        return value.transpose(2, 3, 0, 1) if CONV_TRANSPOSE_KEYS.search(key) else value.transpose(2, 3, 1, 0)
    return value


def _as_numpy(value: Any) -> np.ndarray:
    """Accepts numpy arrays, jax arrays and torch tensors (bf16/fp16 tensors are widened to float32)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def torch_to_flax(
    state_dict: Mapping[str, Any],
    params_template: Params,
    prefix: str = "",
    allow_missing: Iterable[str] = (),
    context: str = "",
) -> dict:
    """Builds Flax params shaped like `params_template` from a PyTorch state_dict.

    `prefix` is stripped from the torch keys (e.g. "sam_mask_decoder." to load one component). `allow_missing`
    are regexes of torch keys that may be absent; those params keep the template's value (used to start RobotSeg
    from a SAM 2.1 checkpoint with only the new parameters fresh). Everything else must match exactly.
    """
    allowed = [re.compile(p) for p in allow_missing]
    flat_template = traverse_util.flatten_dict(dict(params_template))
    torch_sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    out, missing, mismatched, used = {}, [], [], set()
    for path, template in flat_template.items():
        key = flax_path_to_torch_key(path)
        if key not in torch_sd:
            if any(p.search(key) for p in allowed):
                out[path] = template
            else:
                missing.append(prefix + key)
            continue
        used.add(key)
        value = _to_flax_layout(key, path[-1], _as_numpy(torch_sd[key]))
        if tuple(value.shape) != tuple(template.shape):
            mismatched.append((prefix + key, _as_numpy(torch_sd[key]).shape, _torch_shape(key, path[-1], template)))
            continue
        out[path] = np.asarray(value, dtype=np.float32)
    unexpected = sorted(prefix + k for k in torch_sd if k not in used)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context)
    return traverse_util.unflatten_dict(out)


def _torch_shape(key: str, leaf: str, template: Any) -> tuple:
    return _to_torch_layout(key, leaf, np.empty(template.shape, dtype=np.bool_)).shape


def flax_to_torch(params: Params) -> dict[str, np.ndarray]:
    """The inverse of `torch_to_flax`: a flat `{torch_key: numpy array}` state dict, in Flax traversal order."""
    out = {}
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        key = flax_path_to_torch_key(path)
        # np.array(order="C") rather than np.ascontiguousarray, which turns 0-d params (SEMA's
        # structure_strength) into shape (1,)
        out[key] = np.array(_to_torch_layout(key, path[-1], np.asarray(jax.device_get(value))), order="C")
    return out


def count_params(params: Params) -> int:
    """Number of trainable parameters, leaving out buffers, as `sum(p.numel() for p in model.parameters())`."""
    total = 0
    for path, value in traverse_util.flatten_dict(dict(params)).items():
        if flax_path_to_torch_key(path) not in BUFFER_KEYS:
            total += int(np.prod(value.shape))
    return total
