"""AdamW with SAM 2's parameter groups (sam2 training/optimizer.py, as RobotSeg configures it), in optax.

Every rule is decided on the parameter's PyTorch name (`torch_keys.flax_path_to_torch_key`), so that it reads as
in the reference configs:
- learning rate: `image_encoder.*` starts at `vision_lr`, everything else at `base_lr`; both follow a cosine to
  `end_lr_ratio` x start over the run, updated every step. Trunk parameters are further scaled by layer-wise
  decay: `blocks.i` by decay^(num_blocks - i), `patch_embed` by decay^(num_blocks + 1), `pos_embed*` by 1.
- weight decay: `weight_decay` for all but parameters whose name contains "bias" and the weights of
  `torch.nn.LayerNorm` modules (sam2's LayerNorm2d and GroupNorm weights are decayed).
- gradients are clipped to a global L2 norm before Adam (train_step.py skips a step whose gradients are not
  finite).
Buffers that Flax keeps as params (the prompt encoder's random Fourier matrix) never change.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from robotseg_jax.checkpoints.torch_keys import BUFFER_KEYS, flax_path_to_torch_key

# sam2's LayerNorm2d: a custom module, not torch.nn.LayerNorm, so its weight is decayed.
LAYER_NORM_2D = re.compile(
    r"^(sam_prompt_encoder\.mask_downscaling\.\d+|sam_mask_decoder\.output_upscaling\.\d+"
    r"|memory_encoder\.mask_downsampler\.encoder\.\d+|memory_encoder\.fuser\.layers\.\d+\.norm)\.weight$"
)
_TRUNK_BLOCK = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """The defaults are RobotSeg's training recipe (robotseg-train.yaml): AdamW, lr 3e-4 (image encoder 6e-5) with
    layer decay 0.9, weight decay 0.1, cosine to 1/10, gradient clip 0.1."""

    total_steps: int
    base_lr: float = 3e-4
    vision_lr: float = 6e-5
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    layer_decay: float = 0.9
    grad_clip_norm: float = 0.1
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    freeze_image_encoder: bool = False


def cosine_factor(step: jax.Array, total_steps: int, end_ratio: float) -> jax.Array:
    """fvcore's CosineParamScheduler relative to its start: end + (1 - end)/2 (1 + cos(pi w)), w = step/total."""
    where = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return end_ratio + 0.5 * (1.0 - end_ratio) * (1.0 + jnp.cos(math.pi * where))


def lr_multiplier(torch_key: str, config: OptimizerConfig, num_trunk_blocks: int) -> float:
    """The parameter's learning rate relative to `base_lr` (0 for frozen ones)."""
    if torch_key in BUFFER_KEYS:
        return 0.0
    if not torch_key.startswith("image_encoder."):
        return 1.0
    if config.freeze_image_encoder:
        return 0.0
    vision = config.vision_lr / config.base_lr
    if not torch_key.startswith("image_encoder.trunk."):
        return vision  # the neck: no layer decay
    # sam2 Hiera.get_layer_id: pos_embed and patch_embed -> 0, blocks.i -> i + 1, the rest -> num_layers + 1;
    # scale = decay^(num_layers - layer_id) with num_layers = num_blocks + 1; pos_embed* is overridden to 1.
    if "pos_embed" in torch_key:
        return vision
    num_layers = num_trunk_blocks + 1
    block = _TRUNK_BLOCK.match(torch_key)
    layer_id = 0 if "patch_embed" in torch_key else int(block.group(1)) + 1 if block else num_layers + 1
    return vision * config.layer_decay ** (num_layers - layer_id)


def is_decayed(torch_key: str, flax_leaf: str) -> bool:
    """Weight decay applies except to biases and torch.nn.LayerNorm weights (Flax LayerNorm `scale`)."""
    if "bias" in torch_key:
        return False
    is_norm_weight = flax_leaf == "scale"
    return not is_norm_weight or bool(LAYER_NORM_2D.match(torch_key)) or _is_group_norm(torch_key)


def _is_group_norm(torch_key: str) -> bool:
    """SEMA's GroupNorm weights (decayed, as the original's optimizer groups them). Flax's GroupNorm also names its weight `scale`."""
    return ".group_norm" in torch_key or re.search(r"\.gn\d*\.weight$", torch_key) is not None


def _per_param(params, fn: Callable[[str, str], object]):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: fn(flax_path_to_torch_key(path), path[-1]) for path in flat})


def num_trunk_blocks(params) -> int:
    keys = {flax_path_to_torch_key(p) for p in traverse_util.flatten_dict(params)}
    blocks = {int(m.group(1)) for k in keys if (m := _TRUNK_BLOCK.match(k))}
    return max(blocks) + 1 if blocks else 0


def lr_multipliers(params, config: OptimizerConfig):
    """A tree like `params` of each parameter's lr relative to base_lr."""
    blocks = num_trunk_blocks(params)
    return _per_param(params, lambda key, _: lr_multiplier(key, config, blocks))


def decay_mask(params):
    return _per_param(params, is_decayed)


def _scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiplies each update by its parameter's fixed multiplier (the per-group lr of torch param groups)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(params, config: OptimizerConfig) -> optax.GradientTransformation:
    """torch AdamW over SAM 2's param groups: p -= lr_group(t) * (adam(g) + wd_group * p), after clipping.

    Frozen parameters (multiplier 0) get zero updates and no Adam state.
    """
    multipliers = lr_multipliers(params, config)
    trainable = jax.tree.map(lambda m: m != 0.0, multipliers)
    schedule = lambda step: -config.base_lr * cosine_factor(step, config.total_steps, config.end_lr_ratio)
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
    return optax.chain(
        # Clipping and Adam see the trainable parameters only, as torch's clip_grad_norm_ and AdamW over the
        # parameters that receive gradients; frozen ones get zero updates and keep no Adam state.
        optax.multi_transform(
            {
                "train": optax.chain(
                    optax.clip_by_global_norm(config.grad_clip_norm),
                    optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
                ),
                "frozen": optax.set_to_zero(),
            },
            labels,
        ),
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask(params)),
        optax.scale_by_schedule(schedule),
        _scale_by_tree(multipliers),  # the per-group lr; 0 for frozen parameters also cancels their decay
    )


def learning_rates(params, config: OptimizerConfig, step: int):
    """The per-parameter learning rate at `step` (for logging and tests)."""
    factor = config.base_lr * cosine_factor(jnp.asarray(step, jnp.float32), config.total_steps, config.end_lr_ratio)
    return jax.tree.map(lambda m: m * factor, lr_multipliers(params, config))
