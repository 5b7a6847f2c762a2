"""The RobotSeg model: its parameters and checkpoints, and a tracking chain that reduces to SAM 2.1 (sam2 1.1.0
on the same weights) when SEMA's gate strength is 0 and no category is given.

Small size: 128 px -> an 8x8 token grid; SEMA and RPG take any grid (the original hard-codes 64x64).
"""

from __future__ import annotations

import dataclasses
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from robotseg_jax import convert as convert_cli
from robotseg_jax.checkpoints import convert
from robotseg_jax.checkpoints.torch_keys import (
    CheckpointMismatchError,
    count_params,
    flax_to_torch,
)
from robotseg_jax.modeling.config import RobotSegConfig, get_model_config
from robotseg_jax.modeling.memory_bank import (
    MemoryEntry,
    memory_capacity,
    pack_memory,
    select_memory,
)
from robotseg_jax.modeling.common import IMAGENET_MEAN, IMAGENET_STD
from robotseg_jax.modeling.robotseg import RobotSegModel
from robotseg_jax.modeling.rpg import foreground_on_memory_grid
from robotseg_jax.modeling.sam2 import Prompts, RobotInputs
from tests.reference import build_reference, max_abs_diff, nchw_to_nhwc, save_official_checkpoint
from tests.test_sema import SEMA_KEY_SHAPES

pytestmark = pytest.mark.reference

IMAGE_SIZE = 128
GRID = IMAGE_SIZE // 16
NUM_FRAMES = 4
CLICK = (40.0, 70.0)
TOL = 1e-4
# The keys RobotSeg adds to SAM 2.1's 471, with their PyTorch shapes.
NEW_KEY_SHAPES = {
    **{f"memory_attention.layers.{i}.{k}": shape for i in range(4) for k, shape in SEMA_KEY_SHAPES.items()},
    "sam_mask_decoder.robot_token_embedding.weight": (3, 256),
    "robot_prompt_generator.no_memory_prompt_embeddings_fg.weight": (1, 256),
}


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sam21():
    """sam2 1.1.0's SAM 2.1 Hiera-T with random weights, and its state dict as numpy."""
    ref = build_reference("sam2.1_hiera_t", IMAGE_SIZE, seed=1)
    return ref, {k: v.numpy() for k, v in ref.state_dict().items()}


@pytest.fixture(scope="module")
def config() -> RobotSegConfig:
    return get_model_config("robotseg_hiera_t", image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def params(sam21, config) -> dict:
    return convert.init_from_sam2(sam21[1], config, jax.random.key(0))


def _with_alpha(params: dict, alpha: float) -> dict:
    layers = {
        name: {**layer, "structure_strength": np.asarray(alpha, np.float32)}
        for name, layer in params["memory_attention"].items()
        if name.startswith("layers_")
    }
    return {**params, "memory_attention": {**params["memory_attention"], **layers}}


def _frames(seed: int = 0) -> torch.Tensor:
    return torch.randn(NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


# One compiled program per kind of call, shared by the tests.
@functools.cache
def _steps(config: RobotSegConfig):
    model = RobotSegModel(config)
    encode = jax.jit(lambda v, x: model.apply(v, x, method="forward_image"))
    prompt = jax.jit(
        lambda v, f, p, x, c: model.apply(
            v, f, None, p, RobotInputs(x, c), is_init_cond_frame=True, method="track_step"
        )
    )
    track = jax.jit(
        lambda v, f, m, x, c, k: model.apply(v, f, m, Prompts(), RobotInputs(x, c, k), method="track_step")
    )
    return encode, prompt, track


def _run_chain(config, params, frames: torch.Tensor, category: int):
    """Frame 0 prompted with a click, frames 1.. tracked from memory; every frame with `category`."""
    encode, prompt, track = _steps(config)
    variables = {"params": params}
    images = jnp.asarray(nchw_to_nhwc(frames))
    categories = jnp.asarray([category], jnp.int32)
    capacity = memory_capacity(config, max_cond_frames=1)
    click = Prompts(jnp.asarray([[CLICK]], jnp.float32), jnp.asarray([[1]], jnp.int32))
    outputs, cache_sizes = [], []
    for t in range(len(frames)):
        features, image = encode(variables, images[t : t + 1]), images[t : t + 1]
        if t == 0:
            out = prompt(variables, features, click, image, categories)
        else:
            memory = pack_memory(
                config,
                select_memory(config, t, [0], range(1, t), NUM_FRAMES),
                lambda f: MemoryEntry(
                    outputs[f].maskmem_features,
                    outputs[f].obj_ptr,
                    foreground_on_memory_grid(outputs[f].pred_masks[:, 0], (GRID, GRID)),
                ),
                capacity,
                (1, GRID, GRID),
            )
            out = track(variables, features, memory, image, categories, jax.random.key(t))
            cache_sizes.append(track._cache_size())
        outputs.append(out)
    return outputs, cache_sizes


def _run_sam21(ref, frames: torch.Tensor):
    """sam2's own track_step on the same frames and click (the SAM 2.1 behaviour to reduce to)."""
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    outputs = []
    for t in range(NUM_FRAMES):
        _, feats, pos, sizes = ref._prepare_backbone_features(ref.forward_image(frames[t : t + 1]))
        points = None
        if t == 0:
            points = {"point_coords": torch.tensor([[CLICK]]), "point_labels": torch.tensor([[1]], dtype=torch.int32)}
        out = ref.track_step(t, t == 0, feats, pos, sizes, points, None, output_dict, NUM_FRAMES)
        output_dict["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
        outputs.append(out)
    return outputs


# ---------------------------------------------------------------------------------------------- parameters
def test_param_count_and_keys_are_the_originals(params):
    # The params do not depend on image_size, so the 128 px model has the 1024 px model's parameters.
    assert count_params(params) == 41_300_298
    state_dict = flax_to_torch(params)
    assert len(state_dict) == 585
    new = {k: v.shape for k, v in state_dict.items() if k in NEW_KEY_SHAPES}
    assert new == NEW_KEY_SHAPES
    assert state_dict["memory_attention.layers.2.structure_strength"].shape == ()


def test_sam21_checkpoint_initialises_exactly_the_new_keys(sam21, config, params):
    _, sam21_state = sam21
    state_dict = flax_to_torch(params)
    assert set(state_dict) - set(sam21_state) == set(NEW_KEY_SHAPES)
    for key, value in sam21_state.items():
        assert np.array_equal(state_dict[key], value), key

    # One structure branch deep-copied into all 4 layers, as the original builds them.
    branch = lambda i: {k: state_dict[f"memory_attention.layers.{i}.{k}"] for k in SEMA_KEY_SHAPES}
    for i in (1, 2, 3):
        assert all(np.array_equal(branch(0)[k], branch(i)[k]) for k in SEMA_KEY_SHAPES), i
    # PyTorch's defaults: U(+-1/sqrt(fan_in)) for conv/linear weights and biases, GroupNorm 1/0, N(0, 1)
    # embeddings, alpha 1.
    first = branch(0)
    assert first["structure_strength"] == 1.0
    for k in (3, 5, 7):
        assert (first[f"ms_pyramid.conv{k}.norm.weight"] == 1).all()
        assert (first[f"ms_pyramid.conv{k}.norm.bias"] == 0).all()
    for weight, fan_in in [("ms_pyramid.fuse", 768), ("ms_pyramid.conv7.pw", 256), ("cross_attn_structure.k_proj", 64)]:
        bound = 1 / np.sqrt(fan_in)
        for tensor in (first[f"{weight}.weight"], first[f"{weight}.bias"]):
            assert 0.9 * bound < np.abs(tensor).max() <= np.float32(bound)
        assert abs(first[f"{weight}.weight"].std() - bound / np.sqrt(3)) < 0.05 * bound  # uniform's spread
    assert np.abs(first["ms_pyramid.conv3.dw.weight"]).max() <= np.float32(1 / 3)  # depthwise: fan_in = 1 * 3 * 3
    classes = state_dict["sam_mask_decoder.robot_token_embedding.weight"]
    assert abs(classes.mean()) < 0.15 and abs(classes.std() - 1) < 0.1

    again = flax_to_torch(convert.init_from_sam2(sam21_state, config, jax.random.key(0)))
    other = flax_to_torch(convert.init_from_sam2(sam21_state, config, jax.random.key(1)))
    assert all(np.array_equal(again[k], state_dict[k]) for k in state_dict)
    assert not np.array_equal(other["sam_mask_decoder.robot_token_embedding.weight"], classes)


def test_robotseg_state_dict_round_trips_bit_exactly_through_the_cli(tmp_path, sam21, capsys):
    rng = np.random.default_rng(0)
    state_dict = dict(sam21[1])
    state_dict.update({k: rng.standard_normal(shape).astype(np.float32) for k, shape in NEW_KEY_SHAPES.items()})
    official, orbax_dir, back = tmp_path / "robotseg.pt", tmp_path / "orbax", tmp_path / "back.pt"
    convert.save_torch_state_dict(state_dict, official)

    assert convert_cli.main(["--from-torch", str(official), "--model", "robotseg_hiera_t", "--out", str(orbax_dir)]) == 0
    assert "41,300,298 parameters" in capsys.readouterr().out
    assert convert_cli.main(["--to-torch", "--model", "robotseg_hiera_t", "--from", str(orbax_dir), "--out", str(back)]) == 0
    restored = convert.load_torch_state_dict(back)
    assert set(restored) == set(state_dict)
    for key, value in state_dict.items():
        assert restored[key].shape == value.shape and np.array_equal(restored[key], value), key

    # A RobotSeg checkpoint is recognised as one (for the error of loading it as SAM 2.1), and is not a start for
    # init_from_sam2.
    assert convert.guess_model_name(state_dict) == "robotseg_hiera_t"
    assert convert.guess_model_name(sam21[1]) == "sam2.1_hiera_t"
    with pytest.raises(CheckpointMismatchError, match="init_from_sam2 takes a SAM 2.1 checkpoint"):
        convert.init_from_sam2(state_dict, get_model_config("robotseg_hiera_t"), jax.random.key(0))


def test_cli_starts_robotseg_from_a_sam21_checkpoint(tmp_path, sam21, config, params, capsys):
    official = tmp_path / "sam2.1_hiera_tiny.pt"
    save_official_checkpoint(sam21[0], official)
    # Without the flag, missing keys are an error that points to it.
    with pytest.raises(CheckpointMismatchError, match="--init-from-sam2") as err:
        convert_cli.main(["--from-torch", str(official), "--model", "robotseg_hiera_t", "--out", str(tmp_path / "x")])
    assert set(err.value.missing) == set(NEW_KEY_SHAPES)
    with pytest.raises(SystemExit):  # argparse: the flag needs a RobotSeg model
        convert_cli.main(["--from-torch", str(official), "--model", "sam2.1_hiera_t", "--init-from-sam2", "--out", "x"])

    out = tmp_path / "robotseg"
    argv = ["--from-torch", str(official), "--model", "robotseg_hiera_t", "--init-from-sam2", "--out", str(out)]
    assert convert_cli.main(argv) == 0
    assert "41,300,298 parameters (2,337,800 initialised fresh)" in capsys.readouterr().out
    loaded, name = convert.load_params(out, config)
    assert name == "robotseg_hiera_t"
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded, params))  # --seed 0 = key 0

    # Training's init_checkpoint takes the same files: a SAM 2.1 .pt starts RobotSeg as init_from_sam2, the
    # RobotSeg orbax directory and a RobotSeg .pt load as they are.
    same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))
    assert same(convert.initial_params(config, official, seed=0), params)
    assert same(convert.initial_params(config, out, seed=5), params)
    robotseg_pt = tmp_path / "robotseg.pt"
    convert.save_torch_state_dict(flax_to_torch(params), robotseg_pt)
    assert same(convert.initial_params(config, robotseg_pt, seed=5), params)


# ---------------------------------------------------------------------------------------------- tracking
def test_chain_without_category_and_gate_is_sam21(sam21, config, params):
    ref, _ = sam21
    frames = _frames()
    theirs = _run_sam21(ref, frames)
    ours, cache_sizes = _run_chain(config, _with_alpha(params, 0.0), frames, category=-1)
    assert cache_sizes == [1] * (NUM_FRAMES - 1)  # one program for every tracked frame
    for t, (r, j) in enumerate(zip(theirs, ours)):
        diffs = {
            "pred_masks": max_abs_diff(r["pred_masks"], j.pred_masks),
            "pred_masks_high_res": max_abs_diff(r["pred_masks_high_res"], j.pred_masks_high_res),
            "object_score_logits": max_abs_diff(r["object_score_logits"], j.object_score_logits),
            "obj_ptr": max_abs_diff(r["obj_ptr"], j.obj_ptr),
            "maskmem_features": max_abs_diff(nchw_to_nhwc(r["maskmem_features"]), j.maskmem_features),
        }
        assert all(d <= TOL for d in diffs.values()), f"frame {t}: {diffs}"
    assert any((np.asarray(j.pred_masks) > 0).any() for j in ours)


def test_category_and_structure_gate_act_in_the_same_program(config, params):
    frames = _frames(1)
    plain, _ = _run_chain(config, _with_alpha(params, 0.0), frames, category=-1)
    gated, _ = _run_chain(config, params, frames, category=-1)
    robot, cache_sizes = _run_chain(config, params, frames, category=2)
    assert cache_sizes == [1] * (NUM_FRAMES - 1)  # categories and params are data: still one program
    # frame 0 has no memory: no SEMA, so the gate changes nothing there; the class token does
    assert np.array_equal(plain[0].pred_masks, gated[0].pred_masks)
    assert max_abs_diff(gated[0].pred_masks, robot[0].pred_masks) > 1e-3
    for t in range(1, NUM_FRAMES):
        assert max_abs_diff(plain[t].pred_masks, gated[t].pred_masks) > 1e-4, t
        assert max_abs_diff(gated[t].pred_masks, robot[t].pred_masks) > 1e-3, t


def test_structure_maps_and_their_placeholders(config, params):
    frames = _frames(2)
    outputs, _ = _run_chain(config, params, frames, category=1)
    shape = (1, 4, IMAGE_SIZE, IMAGE_SIZE)
    # A frame without memory: its own high-res mask logits, once per layer (the original's placeholder).
    first = outputs[0]
    assert first.structure_maps.shape == shape
    np.testing.assert_array_equal(first.structure_maps, jnp.repeat(first.pred_masks_high_res, 4, axis=1))
    # Tracked frames: SEMA's logits of each layer, x16 upsampled from the token grid.
    for out in outputs[1:]:
        maps = np.asarray(out.structure_maps)
        assert maps.shape == shape and np.isfinite(maps).all()
        assert not np.allclose(maps, np.repeat(np.asarray(out.pred_masks_high_res), 4, axis=1))
        assert len({maps[0, i].tobytes() for i in range(4)}) == 4  # identical branches, different inputs
    # A mask-as-output frame: (mask * 20 - 10), once per layer.
    encode, prompt, _ = _steps(config)
    variables = {"params": params}
    image = jnp.asarray(nchw_to_nhwc(frames[:1]))
    mask = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE)).at[:, 30:70, 20:90].set(1.0)
    out = prompt(variables, encode(variables, image), Prompts(mask_inputs=mask), image, jnp.asarray([2], jnp.int32))
    np.testing.assert_array_equal(out.structure_maps, jnp.repeat((mask * 20 - 10)[:, None], 4, axis=1))


def test_edges_from_rgb_switch_feeds_sema_the_unnormalised_frame(config, params):
    frames = _frames(3)
    outputs, _ = _run_chain(config, params, frames[:2], category=-1)
    encode, _, _ = _steps(config)
    variables = {"params": params}
    # an RGB frame in [0, 1], edges everywhere and no magnitude ties (a rounding step could flip NMS at a tie),
    # normalised as the model input
    rgb = np.random.default_rng(0).uniform(0, 1, (IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    image = jnp.asarray(((rgb - IMAGENET_MEAN) / IMAGENET_STD)[None])
    features = encode(variables, image)
    memory = pack_memory(
        config,
        select_memory(config, 1, [0], [], NUM_FRAMES),
        lambda f: MemoryEntry(outputs[f].maskmem_features, outputs[f].obj_ptr),
        memory_capacity(config, 1),
        (1, GRID, GRID),
    )

    def structure_maps(cfg):
        robot = lambda x: RobotInputs(x, jnp.asarray([-1], jnp.int32))
        attend = lambda v, f, m, x: RobotSegModel(cfg).apply(v, f, m, robot(x), True, method="attend_to_memory")[1]
        return functools.partial(jax.jit(attend), variables, features, memory)

    default, switched = structure_maps(config), structure_maps(dataclasses.replace(config, edges_from_rgb=True))
    from_rgb = switched(image)
    np.testing.assert_allclose(from_rgb, default(image * IMAGENET_STD + IMAGENET_MEAN), atol=1e-6)
    # the default, edges of the normalised input: divided by 255 (its max > 1.5), so nearly inert (the original's
    # behaviour);
    # with these random weights the maps move by ~2e-4, far above the rounding of the identity above
    assert np.abs(from_rgb - default(image)).max() > 2e-5


def test_bad_inputs_raise_value_errors(config, params):
    model = RobotSegModel(config)
    variables = {"params": params}
    encode, prompt, _ = _steps(config)
    image = jnp.asarray(nchw_to_nhwc(_frames()[:1]))
    features = encode(variables, image)
    category = jnp.asarray([0], jnp.int32)
    apply = functools.partial(model.apply, variables, features, method="track_step")
    step = lambda memory, prompts, image, category, rng=None, **kwargs: apply(
        memory, prompts, RobotInputs(image, category, rng), **kwargs
    )
    with pytest.raises(ValueError, match=re.escape(f"RobotInputs.image must be the model input [B, {IMAGE_SIZE}")):
        step(None, Prompts(), image[:, :64], category, is_init_cond_frame=True)
    with pytest.raises(ValueError, match="RobotInputs.category must be \\[B\\] integers"):
        step(None, Prompts(), image, jnp.asarray([0.0]), is_init_cond_frame=True)
    with pytest.raises(ValueError, match="RobotInputs.category must be \\[B\\] integers"):
        step(None, Prompts(), image, jnp.asarray([0, 1], jnp.int32), is_init_cond_frame=True)
    with pytest.raises(ValueError, match="got \\[3\\]"):
        step(None, Prompts(), image, jnp.asarray([3], jnp.int32), is_init_cond_frame=True)
    with pytest.raises(ValueError, match="needs a memory bank"):
        step(None, Prompts(), image, category)
    first = prompt(variables, features, Prompts(jnp.asarray([[CLICK]]), jnp.asarray([[1]], jnp.int32)), image, category)
    capacity = memory_capacity(config, 1)
    selection = select_memory(config, 1, [0], [], 2)
    pack = lambda foreground=None: pack_memory(
        config, selection, lambda f: MemoryEntry(first.maskmem_features, first.obj_ptr, foreground), capacity,
        (1, GRID, GRID),
    )
    with pytest.raises(ValueError, match="maskmem_foreground"):
        step(pack(), Prompts(), image, category, rng=jax.random.key(0))
    foreground = pack(foreground_on_memory_grid(first.pred_masks[:, 0], (GRID, GRID)))
    with pytest.raises(ValueError, match="needs an rng"):
        step(foreground, Prompts(), image, category)
