"""Parity of the Hiera trunk and the image encoder with sam2 1.1.0 on the same random weights."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from flax import traverse_util

from robotseg_jax.checkpoints.torch_keys import count_params, flax_path_to_torch_key
from robotseg_jax.modeling.config import REFERENCE_YAML, HieraConfig, get_model_config
from robotseg_jax.modeling.hiera import Hiera, block_specs, resize_bicubic
from robotseg_jax.modeling.image_encoder import ImageEncoder
from tests.reference import (
    max_abs_diff,
    nchw_to_nhwc,
    nhwc_to_nchw,
    perturb_,
    to_flax,
)

TOL = 1e-4

# A small trunk for branches that Hiera-T does not take: two heads from the first stage (as B+ and L), a 14x14
# background embedding resized down (B+ on small grids), a width change without query pooling (q_pool < 3), and
# padded windows (6 and 3 on an 8x8 map) in both blocks of a stage.
TINY_HIERA = HieraConfig(
    embed_dim=16,
    num_heads=2,
    stages=(1, 2, 2, 2),
    global_att_blocks=(4,),
    window_spec=(4, 4, 6, 3),
    window_pos_embed_bkg_spatial_size=(14, 14),
    q_pool=2,
)


def torch_hiera(config: HieraConfig):
    from sam2.modeling.backbones.hieradet import Hiera as TorchHiera

    fields = ("embed_dim", "num_heads", "drop_path_rate", "q_pool", "q_stride", "stages", "dim_mul", "head_mul",
              "window_pos_embed_bkg_spatial_size", "window_spec", "global_att_blocks")
    return TorchHiera(**{f: getattr(config, f) for f in fields}).eval()


def yaml_trunk_kwargs(model_name: str) -> dict:
    import sam2

    with open(os.path.join(os.path.dirname(sam2.__file__), REFERENCE_YAML[model_name])) as f:
        trunk = yaml.safe_load(f)["model"]["image_encoder"]["trunk"]
    trunk.pop("_target_")
    return trunk


def random_images(shape, seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randn(*shape).astype(np.float32)


@pytest.mark.reference
@pytest.mark.parametrize(
    "in_hw, out_hw",
    [((7, 7), (64, 64)), ((14, 14), (16, 16)), ((14, 14), (8, 8)), ((7, 7), (32, 48)), ((5, 9), (3, 20))],
)
def test_bicubic_matches_torch(in_hw, out_hw):
    x = torch.randn(2, 5, *in_hw, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, size=out_hw, mode="bicubic", align_corners=False)
    got = resize_bicubic(jnp.asarray(nchw_to_nhwc(x)), out_hw)
    assert max_abs_diff(got, nchw_to_nhwc(expected)) <= 1e-5


@pytest.fixture(scope="module")
def hiera_t_encoder(sam21_reference):
    """Hiera-T in its real configuration at a reduced image size (256), with sam2's weights converted by the
    converter."""
    reference = sam21_reference.image_encoder
    model = ImageEncoder(get_model_config("sam2.1_hiera_t", image_size=256))
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 3)))["params"]
    params = to_flax(reference, template, prefix="")
    return reference, model, params


# 256x256 pads the 14- and 7-token windows of stages 3 and 4 (16x16 and 8x8 maps); 160x288 is non-square with
# odd stage-4 sizes (5x9), where the query-pooled windows are cropped back after unpartitioning.
@pytest.mark.reference
@pytest.mark.parametrize("shape", [(2, 256, 256, 3), (1, 160, 288, 3)])
def test_image_encoder_matches_sam2(hiera_t_encoder, shape, attention_path):
    reference, model, params = hiera_t_encoder
    images = random_images(shape)
    expected = reference(nhwc_to_nchw(images))
    expected_trunk = reference.trunk(nhwc_to_nchw(images))

    is_trunk = lambda module, method_name: isinstance(module, Hiera)
    got, state = jax.jit(lambda p, x: model.apply({"params": p}, x, capture_intermediates=is_trunk, mutable=True))(
        params, jnp.asarray(images)
    )
    (got_trunk,) = state["intermediates"]["trunk"]["__call__"]

    for level, (a, b) in enumerate(zip(got_trunk, expected_trunk, strict=True)):
        assert max_abs_diff(a, nchw_to_nhwc(b)) <= TOL, f"trunk stage {level}"
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(got[key]) == len(expected[key]) == 3
        for level, (a, b) in enumerate(zip(got[key], expected[key])):
            assert max_abs_diff(a, nchw_to_nhwc(b)) <= TOL, f"{key}[{level}]"
    assert got["vision_features"].shape == (shape[0], shape[1] // 16, shape[2] // 16, 256)
    assert max_abs_diff(got["vision_features"], nchw_to_nhwc(expected["vision_features"])) <= TOL


@pytest.mark.reference
def test_tiny_hiera_matches_sam2():
    torch.manual_seed(0)
    reference = perturb_(torch_hiera(TINY_HIERA))
    model = Hiera(TINY_HIERA)
    images = random_images((2, 128, 128, 3))
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.asarray(images))["params"]
    got = jax.jit(model.apply)({"params": to_flax(reference, template)}, jnp.asarray(images))
    expected = reference(nhwc_to_nchw(images))
    for level, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert max_abs_diff(a, nchw_to_nhwc(b)) <= TOL, f"stage {level}"


@pytest.mark.reference
@pytest.mark.parametrize("model_name", ["sam2.1_hiera_t", "sam2.1_hiera_b+", "sam2.1_hiera_l", None])
def test_block_specs_match_sam2(model_name):
    from sam2.modeling.sam2_utils import DropPath

    config = get_model_config(model_name).hiera if model_name else TINY_HIERA
    config = dataclasses.replace(config, drop_path_rate=0.3)
    reference = torch_hiera(config)
    for spec, block in zip(block_specs(config), reference.blocks, strict=True):
        rate = block.drop_path.drop_prob if isinstance(block.drop_path, DropPath) else 0.0
        assert (spec.dim, spec.dim_out, spec.num_heads, spec.window_size, spec.q_stride) == (
            block.dim, block.dim_out, block.attn.num_heads, block.window_size, block.q_stride
        )
        assert spec.drop_path_rate == pytest.approx(rate, abs=1e-7)


@pytest.mark.reference
@pytest.mark.parametrize("model_name", ["sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"])
def test_trunk_params_and_shapes(model_name):
    from sam2.modeling.backbones.hieradet import Hiera as TorchHiera

    reference = TorchHiera(**yaml_trunk_kwargs(model_name))
    config = get_model_config(model_name).hiera
    model = Hiera(config)
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]

    keys = {flax_path_to_torch_key(path) for path in traverse_util.flatten_dict(params)}
    assert keys == set(reference.state_dict())
    assert count_params(params) == sum(p.numel() for p in reference.parameters())
    assert list(config.channel_list) == reference.channel_list

    outputs = jax.eval_shape(model.apply, {"params": params}, images)
    dims = config.channel_list[::-1]
    assert [o.shape for o in outputs] == [(2, 64 // s, 64 // s, d) for s, d in zip((4, 8, 16, 32), dims)]


def test_drop_path():
    # Two stages of one block each: enough for per-block rates 0 and 0.5, and quick to compile.
    config = HieraConfig(
        embed_dim=8, stages=(1, 1), global_att_blocks=(), window_spec=(4, 4), window_pos_embed_bkg_spatial_size=(4, 4),
        q_pool=1, drop_path_rate=0.5,
    )
    model = Hiera(config)
    images = jnp.asarray(random_images((8, 32, 32, 3)))
    # Random params without model.init: its random initialisers take longer to compile than the model.
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)["params"]
    rng = np.random.RandomState(0)
    params = jax.tree_util.tree_map(lambda s: rng.normal(0.0, 0.2, s.shape).astype(np.float32), template)

    apply = jax.jit(model.apply, static_argnames="deterministic")
    eval_out = apply({"params": params}, images)  # no rng needed
    train_a = apply({"params": params}, images, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    train_b = apply({"params": params}, images, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
    train_a2 = apply({"params": params}, images, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})

    assert max_abs_diff(eval_out[-1], train_a[-1]) > 1e-3
    assert max_abs_diff(train_a[-1], train_b[-1]) > 1e-3
    assert max_abs_diff(train_a[-1], train_a2[-1]) == 0.0
    # The first block has rate 0 (linspace from 0), so the first stage is untouched in training.
    assert max_abs_diff(eval_out[0], train_a[0]) == 0.0
