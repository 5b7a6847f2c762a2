"""The optimizer's param groups against sam2's own `construct_optimizer`, and its updates against torch AdamW."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from robotseg_jax.checkpoints import convert
from robotseg_jax.checkpoints.torch_keys import flax_path_to_torch_key
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.training import optimizer as opt
from tests.reference import build_reference

# The optim block of sam2.1_hiera_b+_MOSE_finetune.yaml with robotseg-train.yaml's learning rates (base 3e-4,
# vision 6e-5; the rest of the block is the same in both).
BASE_LR, VISION_LR = 3e-4, 6e-5
OPTIONS = {
    "lr": [
        {"scheduler": {"_target_": "fvcore.common.param_scheduler.CosineParamScheduler",
                       "start_value": BASE_LR, "end_value": BASE_LR / 10}},
        {"scheduler": {"_target_": "fvcore.common.param_scheduler.CosineParamScheduler",
                       "start_value": VISION_LR, "end_value": VISION_LR / 10},
         "param_names": ["image_encoder.*"]},
    ],
    "weight_decay": [
        {"scheduler": {"_target_": "fvcore.common.param_scheduler.ConstantParamScheduler", "value": 0.1}},
        {"scheduler": {"_target_": "fvcore.common.param_scheduler.ConstantParamScheduler", "value": 0.0},
         "param_names": ["*bias*"], "module_cls_names": ["torch.nn.LayerNorm"]},
    ],
}
MODIFIERS = [{
    "_target_": "training.optimizer.layer_decay_param_modifier", "_partial_": True, "layer_decay_value": 0.9,
    "apply_to": "image_encoder.trunk", "overrides": [{"pattern": "*pos_embed*", "value": 1.0}],
}]


@pytest.fixture(scope="module")
def reference_groups():
    """{torch name: (lr at where=0, lr at where=0.5, weight decay)} from sam2's training code on Hiera-T."""
    from omegaconf import OmegaConf
    from training.optimizer import construct_optimizer

    model = build_reference("sam2.1_hiera_t", image_size=128)
    optimizer = construct_optimizer(
        model, OmegaConf.create({"_target_": "torch.optim.AdamW"}), OmegaConf.create(OPTIONS),
        OmegaConf.create(MODIFIERS),
    )
    names = {id(p): n for n, p in model.named_parameters()}
    result = {}
    for group, schedulers in zip(optimizer.optimizer.param_groups, optimizer.schedulers, strict=True):
        for p in group["params"]:
            result[names[id(p)]] = (
                schedulers["lr"](0.0), schedulers["lr"](0.5), schedulers["weight_decay"](0.0)
            )
    return result


@pytest.fixture(scope="module")
def params_template():
    return convert.params_template(get_model_config("sam2.1_hiera_t", image_size=128))


@pytest.mark.reference
def test_learning_rates_match_sam2(reference_groups, params_template):
    config = opt.OptimizerConfig(total_steps=100, base_lr=BASE_LR, vision_lr=VISION_LR)
    at_start = traverse_util.flatten_dict(opt.learning_rates(params_template, config, 0))
    halfway = traverse_util.flatten_dict(opt.learning_rates(params_template, config, 50))
    checked = 0
    for path in at_start:
        key = flax_path_to_torch_key(path)
        if key not in reference_groups:  # buffers are not torch parameters
            assert float(at_start[path]) == 0.0, key
            continue
        lr0, lr_half, _ = reference_groups[key]
        assert float(at_start[path]) == pytest.approx(lr0, rel=1e-6), key
        assert float(halfway[path]) == pytest.approx(lr_half, rel=1e-6), key
        checked += 1
    assert checked == len(reference_groups)


@pytest.mark.reference
def test_weight_decay_groups_match_sam2(reference_groups, params_template):
    mask = traverse_util.flatten_dict(opt.decay_mask(params_template))
    decayed = {flax_path_to_torch_key(p): bool(v) for p, v in mask.items()}
    for key, (_, _, weight_decay) in reference_groups.items():
        assert decayed[key] == (weight_decay > 0), key


def _tiny_params(rng: np.random.Generator) -> dict:
    """A few tensors whose names hit every rule: trunk block with layer decay, LayerNorm, pos_embed, neck, rest."""
    shapes = {
        ("image_encoder", "trunk", "pos_embed"): (1, 4, 2, 2),
        ("image_encoder", "trunk", "patch_embed", "proj", "kernel"): (3, 3, 3, 4),
        ("image_encoder", "trunk", "blocks_0", "norm1", "scale"): (4,),
        ("image_encoder", "trunk", "blocks_0", "mlp", "layers_0", "kernel"): (4, 8),
        ("image_encoder", "trunk", "blocks_1", "mlp", "layers_0", "bias"): (8,),
        ("image_encoder", "neck", "convs_0", "conv", "kernel"): (1, 1, 4, 4),
        ("obj_ptr_proj", "layers_0", "kernel"): (4, 4),
        ("obj_ptr_proj", "layers_0", "bias"): (4,),
        ("sam_prompt_encoder", "pe_layer", "positional_encoding_gaussian_matrix"): (2, 4),
    }
    return traverse_util.unflatten_dict(
        {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    )


@pytest.mark.reference
def test_updates_equal_torch_adamw_over_the_same_groups():
    rng = np.random.default_rng(0)
    params = _tiny_params(rng)
    config = opt.OptimizerConfig(total_steps=5, grad_clip_norm=0.5)
    tx = opt.make_optimizer(params, config)
    state = tx.init(params)

    flat = traverse_util.flatten_dict(params)
    multipliers = traverse_util.flatten_dict(opt.lr_multipliers(params, config))
    decays = traverse_util.flatten_dict(opt.decay_mask(params))
    torch_params = {p: torch.nn.Parameter(torch.tensor(np.asarray(v))) for p, v in flat.items()}
    trainable = [p for p in flat if multipliers[p] > 0]
    groups = [
        {"params": [torch_params[p]], "mult": multipliers[p], "weight_decay": 0.1 if decays[p] else 0.0}
        for p in trainable
    ]
    torch_opt = torch.optim.AdamW(groups, lr=config.base_lr, betas=(0.9, 0.999), eps=1e-8)

    for step in range(4):
        grads = {p: rng.normal(size=v.shape).astype(np.float32) * (step + 1) for p, v in flat.items()}
        updates, state = tx.update(traverse_util.unflatten_dict({p: jnp.asarray(g) for p, g in grads.items()}),
                                   state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)

        for p in trainable:
            torch_params[p].grad = torch.tensor(grads[p])
        torch.nn.utils.clip_grad_norm_([torch_params[p] for p in trainable], config.grad_clip_norm)
        factor = float(opt.cosine_factor(jnp.float32(step), config.total_steps, config.end_lr_ratio))
        for group in torch_opt.param_groups:
            group["lr"] = config.base_lr * factor * group["mult"]
        torch_opt.step()

    got = traverse_util.flatten_dict(params)
    for p in flat:
        np.testing.assert_allclose(np.asarray(got[p]), torch_params[p].detach().numpy(), rtol=1e-5, atol=1e-7,
                                   err_msg=str(p))
    buffer = ("sam_prompt_encoder", "pe_layer", "positional_encoding_gaussian_matrix")
    assert np.array_equal(np.asarray(got[buffer]), np.asarray(flat[buffer]))


def test_frozen_image_encoder_does_not_move():
    params = _tiny_params(np.random.default_rng(2))
    tx = opt.make_optimizer(params, opt.OptimizerConfig(total_steps=10, freeze_image_encoder=True))
    state = tx.init(params)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates["image_encoder"]))
    assert float(jnp.abs(updates["obj_ptr_proj"]["layers_0"]["kernel"]).max()) > 0
