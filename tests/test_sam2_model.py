"""The whole SAM 2.1 model against sam2 1.1.0: a prompted frame and frames tracked from memory, conversion, errors."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from robotseg_jax.checkpoints import convert
from robotseg_jax.checkpoints.torch_keys import (
    CheckpointMismatchError,
    count_params,
    flax_to_torch,
)
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.memory_bank import (
    MemoryEntry,
    memory_capacity,
    pack_memory,
    select_memory,
)
from robotseg_jax.modeling.sam2 import Prompts, RobotInputs, SAM2Model
from tests.reference import build_reference, max_abs_diff, nchw_to_nhwc

IMAGE_SIZE = 128  # a reduced size keeps the chain fast; the architecture is Hiera-T's real one
NUM_FRAMES = 4
TOL = 1e-4


@functools.cache
def _setup(binarize: bool = False):
    overrides = (f"++model.binarize_mask_from_pts_for_mem_enc={str(binarize).lower()}",)
    ref = build_reference("sam2.1_hiera_t", IMAGE_SIZE, seed=1, overrides=overrides)
    config = get_model_config("sam2.1_hiera_t", image_size=IMAGE_SIZE, binarize_mask_from_pts_for_mem_enc=binarize)
    params = convert.torch_to_params(ref.state_dict(), config)
    return ref, config, params


def _frames(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(NUM_FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)


def _run_reference(ref, frames: torch.Tensor, click):
    """sam2's own track_step over the frames: frame 0 prompted with a click, the rest tracked from memory."""
    heads = []
    original = ref._forward_sam_heads

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        heads.append(out)
        return out

    ref._forward_sam_heads = recording
    output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    outputs = []
    try:
        for t in range(NUM_FRAMES):
            backbone = ref.forward_image(frames[t : t + 1])
            _, feats, pos, sizes = ref._prepare_backbone_features(backbone)
            points = None
            if t == 0:
                points = {"point_coords": torch.tensor([[click]], dtype=torch.float32),
                          "point_labels": torch.tensor([[1]], dtype=torch.int32)}
            out = ref.track_step(t, t == 0, feats, pos, sizes, points, None, output_dict, NUM_FRAMES)
            out["ious"] = heads[-1][2]
            output_dict["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
            outputs.append(out)
    finally:
        ref._forward_sam_heads = original
    return outputs


def _run_jax(config, params, frames: torch.Tensor, click):
    model = SAM2Model(config)
    variables = {"params": params}
    images = jnp.asarray(nchw_to_nhwc(frames))
    encode = jax.jit(lambda v, x: model.apply(v, x, method=SAM2Model.forward_image))
    # SAM 2.1 accepts RobotSeg's inputs and does not use them: the parity below holds with them given.
    robot = RobotInputs(images[:1], jnp.asarray([2], jnp.int32), jax.random.key(0))
    track = jax.jit(
        lambda v, f, m: model.apply(v, f, m, Prompts(), robot, method=SAM2Model.track_step)
    )
    capacity = memory_capacity(config, max_cond_frames=1)
    emb = config.image_embedding_size
    prompts = Prompts(jnp.asarray([[click]], jnp.float32), jnp.asarray([[1]], jnp.int32))
    outputs, compiled_sizes = [], []
    for t in range(NUM_FRAMES):
        features = encode(variables, images[t : t + 1])
        if t == 0:
            out = model.apply(variables, features, None, prompts, is_init_cond_frame=True, method=SAM2Model.track_step)
        else:
            selection = select_memory(config, t, [0], range(1, t), NUM_FRAMES)
            memory = pack_memory(
                config, selection, lambda f: MemoryEntry(outputs[f].maskmem_features, outputs[f].obj_ptr),
                capacity, (1, emb, emb),
            )
            out = track(variables, features, memory)
            compiled_sizes.append(track._cache_size())
        outputs.append(out)
    return outputs, compiled_sizes


@pytest.mark.reference
@pytest.mark.parametrize("binarize", [False, True])
def test_four_frame_chain_matches_reference(binarize, attention_path):
    ref, config, params = _setup(binarize)
    frames, click = _frames(), (40.0, 70.0)
    ref_out = _run_reference(ref, frames, click)
    jax_out, _ = _run_jax(config, params, frames, click)
    for t, (r, j) in enumerate(zip(ref_out, jax_out)):
        diffs = {
            "pred_masks": max_abs_diff(r["pred_masks"], j.pred_masks),
            "pred_masks_high_res": max_abs_diff(r["pred_masks_high_res"], j.pred_masks_high_res),
            "ious": max_abs_diff(r["ious"], j.ious),
            "object_score_logits": max_abs_diff(r["object_score_logits"], j.object_score_logits),
            "obj_ptr": max_abs_diff(r["obj_ptr"], j.obj_ptr),
            "maskmem_features": max_abs_diff(nchw_to_nhwc(r["maskmem_features"]), j.maskmem_features),
        }
        assert all(d <= TOL for d in diffs.values()), f"frame {t}: {diffs}"


@pytest.mark.reference
def test_tracking_compiles_once():
    _, config, params = _setup()
    _, sizes = _run_jax(config, params, _frames(1), (10.0, 20.0))
    # frame 1 compiles the tracked step; frames 2..N reuse it although their memory fills up.
    assert sizes == [1] * (NUM_FRAMES - 1)


def test_hiera_t_param_count_equals_reference():
    config = get_model_config("sam2.1_hiera_t")
    assert count_params(convert.params_template(config)) == 38_962_498


@pytest.mark.reference
def test_round_trip_is_bit_exact(tmp_path):
    ref, config, params = _setup()
    convert.save_params(tmp_path / "ckpt", params, config.name)
    restored, name = convert.load_params(tmp_path / "ckpt", config)
    assert name == config.name
    back = flax_to_torch(restored)
    original = ref.state_dict()
    assert set(back) == set(original)
    for key, value in original.items():
        assert np.array_equal(back[key], value.numpy()), key


@pytest.mark.reference
def test_converted_checkpoint_loads_strictly_in_sam2(tmp_path):
    ref, config, params = _setup()
    path = tmp_path / "back.pt"
    convert.save_torch_state_dict(flax_to_torch(params), path)
    rebuilt = build_reference("sam2.1_hiera_t", IMAGE_SIZE, seed=7)
    rebuilt.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    for key, value in ref.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


@pytest.mark.reference
def test_checkpoint_for_another_model_size_is_rejected():
    _, _, params = _setup()
    config_l = get_model_config("sam2.1_hiera_l", image_size=IMAGE_SIZE)
    with pytest.raises(CheckpointMismatchError, match="looks like sam2.1_hiera_t"):
        convert.torch_to_params(flax_to_torch(params), config_l)


@pytest.mark.reference
def test_missing_and_unexpected_keys_are_listed():
    _, config, params = _setup()
    state = flax_to_torch(params)
    state.pop("no_obj_ptr")
    state["extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointMismatchError) as err:
        convert.torch_to_params(state, config)
    assert "no_obj_ptr" in str(err.value) and "extra.weight" in str(err.value)


@pytest.mark.reference
def test_bad_inputs_raise_value_errors():
    _, config, params = _setup()
    model = SAM2Model(config)
    variables = {"params": params}
    with pytest.raises(ValueError, match="must be \\[B, H, W, 3\\]"):
        model.apply(variables, jnp.zeros((IMAGE_SIZE, IMAGE_SIZE, 3)), method=SAM2Model.forward_image)
    with pytest.raises(ValueError, match=f"must be {IMAGE_SIZE}x{IMAGE_SIZE}"):
        model.apply(variables, jnp.zeros((1, 64, 64, 3)), method=SAM2Model.forward_image)
    features = model.apply(variables, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3)), method=SAM2Model.forward_image)
    track = functools.partial(model.apply, variables, features, None, is_init_cond_frame=True, method=SAM2Model.track_step)
    with pytest.raises(ValueError, match="point_coords must be"):
        track(Prompts(jnp.zeros((1, 2)), jnp.ones((1, 1), jnp.int32)))
    with pytest.raises(ValueError, match="point_labels must be"):
        track(Prompts(jnp.zeros((1, 2, 2)), jnp.ones((1, 3), jnp.int32)))
    with pytest.raises(ValueError, match="point_labels must be in"):
        track(Prompts(jnp.zeros((1, 1, 2)), jnp.full((1, 1), 5, jnp.int32)))
