"""RobotSeg's mask decoder with the class token (`MaskDecoder_Robot_RPG`) against sam2 1.1.0's MaskDecoder.

The reference needs no new code: sam2's decoder builds `[obj_score, iou, mask tokens, sparse prompts]` and
slices its outputs by position, so feeding it `[class token, object tokens, sparse prompts]` as the "sparse
prompts" gives exactly the original's token sequence (`[obj_score, iou, mask tokens, class token, object tokens,
sparse prompts]`) and output slicing.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch
from sam2.modeling.sam.mask_decoder import MaskDecoder as TorchMaskDecoder
from sam2.modeling.sam.transformer import TwoWayTransformer as TorchTwoWayTransformer

from robotseg_jax.checkpoints.torch_keys import flax_to_torch, torch_to_flax
from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.modeling.mask_decoder import RobotMaskDecoder, robot_category_index
from tests.reference import max_abs_diff, nhwc_to_nchw, perturb_

torch.set_grad_enabled(False)

pytestmark = pytest.mark.reference

DIM, H, TOL = 256, 16, 1e-4
SAM21_DECODER = {
    "use_high_res_features": True,
    "iou_prediction_use_sigmoid": True,
    "pred_obj_scores": True,
    "pred_obj_scores_mlp": True,
    "use_multimask_token_for_obj_ptr": True,
}


@pytest.fixture(scope="module")
def decoders():
    transformer = TorchTwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=2048, num_heads=8)
    torch_decoder = perturb_(TorchMaskDecoder(transformer_dim=DIM, transformer=transformer, **SAM21_DECODER).eval())
    class_tokens = torch.randn(len(ROBOT_CATEGORIES), DIM, generator=torch.Generator().manual_seed(3))
    state_dict = {**torch_decoder.state_dict(), "robot_token_embedding.weight": class_tokens}

    model = RobotMaskDecoder(**SAM21_DECODER)
    inputs = _inputs(np.random.default_rng(0), 1)
    init = functools.partial(model.init, jax.random.PRNGKey(0), **inputs, multimask_output=False, repeat_image=False)
    params = {"params": torch_to_flax(state_dict, jax.eval_shape(init)["params"])}
    return torch_decoder, class_tokens, model, params


def _inputs(rng: np.random.Generator, batch: int, num_prompts: int = 2) -> dict:
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    return {
        "image_embeddings": normal(batch, H, H, DIM),
        "image_pe": normal(1, H, H, DIM),
        "sparse_prompt_embeddings": normal(batch, num_prompts, DIM),
        "dense_prompt_embeddings": normal(batch, H, H, DIM),
        "high_res_features": [normal(batch, 4 * H, 4 * H, DIM // 8), normal(batch, 2 * H, 2 * H, DIM // 4)],
    }


def _torch_decode(torch_decoder, inputs: dict, b: int, prefix_tokens: torch.Tensor | None, multimask: bool):
    """sam2's decoder on sample `b`, with `prefix_tokens` `[T, C]` placed before the sparse prompt tokens."""
    sample = lambda x: x[b : b + 1]
    sparse = torch.from_numpy(sample(inputs["sparse_prompt_embeddings"]))
    if prefix_tokens is not None:
        sparse = torch.cat([prefix_tokens[None], sparse], dim=1)
    return torch_decoder(
        image_embeddings=nhwc_to_nchw(sample(inputs["image_embeddings"])),
        image_pe=nhwc_to_nchw(inputs["image_pe"]),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=nhwc_to_nchw(sample(inputs["dense_prompt_embeddings"])),
        multimask_output=multimask,
        repeat_image=False,
        high_res_features=[nhwc_to_nchw(sample(x)) for x in inputs["high_res_features"]],
    )


def _assert_sample_matches(ours, b: int, theirs) -> None:
    diffs = [max_abs_diff(np.asarray(o)[b : b + 1], t) for o, t in zip(ours, theirs)]
    assert max(diffs) <= TOL, diffs


def test_robot_token_embedding_key_and_shape(decoders):
    *_, params = decoders
    state_dict = flax_to_torch(params["params"])
    assert state_dict["robot_token_embedding.weight"].shape == (3, 256)
    assert [robot_category_index(name) for name in ("arm", "gripper", "robot")] == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown robot category"):
        robot_category_index("hand")


@pytest.mark.parametrize("multimask", [False, True])
def test_class_and_object_tokens_follow_the_mask_tokens(decoders, multimask):
    """Per sample: a category (class token + valid object tokens) or none (-1: SAM 2.1's sequence)."""
    torch_decoder, class_tokens, model, params = decoders
    rng = np.random.default_rng(1)
    inputs = _inputs(rng, 3)
    object_tokens = rng.standard_normal((3, 6, DIM)).astype(np.float32)
    object_token_mask = np.array([[True] * 6, [True, True, True, False, False, False], [True] * 6])
    category = np.array([robot_category_index("gripper"), robot_category_index("robot"), -1])

    ours = jax.jit(model.apply, static_argnames=("multimask_output", "repeat_image"))(
        params,
        **inputs,
        multimask_output=multimask,
        repeat_image=False,
        robot_category=category,
        object_tokens=object_tokens,
        object_token_mask=object_token_mask,
    )
    for b in range(3):
        prefix = None
        if category[b] >= 0:
            valid_objects = torch.from_numpy(object_tokens[b][object_token_mask[b]])
            prefix = torch.cat([class_tokens[category[b]][None], valid_objects])
        _assert_sample_matches(ours, b, _torch_decode(torch_decoder, inputs, b, prefix, multimask))
    num_masks = 3 if multimask else 1
    assert ours[0].shape == (3, num_masks, 4 * H, 4 * H) and ours[1].shape == (3, num_masks)


def test_without_category_it_is_sam21s_decoder(decoders):
    torch_decoder, _, model, params = decoders
    inputs = _inputs(np.random.default_rng(2), 2)
    ours = model.apply(params, **inputs, multimask_output=True, repeat_image=False)
    for b in range(2):
        _assert_sample_matches(ours, b, _torch_decode(torch_decoder, inputs, b, None, True))


def test_category_needs_object_tokens(decoders):
    *_, model, params = decoders
    with pytest.raises(ValueError, match="object_tokens"):
        model.apply(
            params,
            **_inputs(np.random.default_rng(3), 1),
            multimask_output=False,
            repeat_image=False,
            robot_category=np.array([0]),
        )
