"""Parity of the prompt encoder, two-way transformer and mask decoder with sam2 1.1.0 (float32, random weights)."""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sam2.modeling.sam.mask_decoder import MaskDecoder as TorchMaskDecoder
from sam2.modeling.sam.transformer import TwoWayTransformer as TorchTwoWayTransformer

from robotseg_jax.modeling.mask_decoder import MaskDecoder
from robotseg_jax.modeling.prompt_encoder import PromptEncoder
from robotseg_jax.modeling.two_way_transformer import TwoWayTransformer
from tests.reference import (
    max_abs_diff,
    nchw_to_nhwc,
    nhwc_to_nchw,
    perturb_,
    to_flax,
)

pytestmark = pytest.mark.reference

IMAGE_SIZE = 256  # the image size of conftest's sam21_reference
EMBED_SIZE = IMAGE_SIZE // 16
DIM = 256
TOL = 1e-4


@pytest.fixture(scope="module")
def ref(sam21_reference):
    """sam2's SAM 2.1 Hiera-T at 256 px with random weights (shared with other modules: read it, copy to modify)."""
    return sam21_reference


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _convert(torch_module: torch.nn.Module, model, *args, **kwargs) -> dict:
    """The torch module's weights as `model`'s variables; the template is only traced (running init is slow)."""
    template = jax.eval_shape(functools.partial(model.init, jax.random.PRNGKey(0), *args, **kwargs))["params"]
    return {"params": to_flax(torch_module, template)}


# ---------------------------------------------------------------------------------------------------------------
# Prompt encoder
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_encoder(ref):
    model = PromptEncoder(DIM, (EMBED_SIZE, EMBED_SIZE), (IMAGE_SIZE, IMAGE_SIZE))
    points = (jnp.zeros((1, 1, 2)), jnp.ones((1, 1), jnp.int32))
    return model, _convert(ref.sam_prompt_encoder, model, points, None, None)


def _clicks(rng: np.random.Generator, labels) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, np.int32)
    return (rng.uniform(0, IMAGE_SIZE, (*labels.shape, 2)).astype(np.float32), labels)


def _boxes(rng: np.random.Generator, batch_size: int) -> np.ndarray:
    top_left = rng.uniform(0, IMAGE_SIZE / 2, (batch_size, 2))
    return np.concatenate([top_left, top_left + rng.uniform(1, IMAGE_SIZE / 2, (batch_size, 2))], 1).astype(np.float32)


def _compare_prompt_encoder(ref, prompt_encoder, points, boxes, masks) -> float:
    model, params = prompt_encoder
    sparse, dense = model.apply(params, points, boxes, masks)
    t_sparse, t_dense = ref.sam_prompt_encoder(
        points=None if points is None else tuple(torch.from_numpy(np.asarray(x)) for x in points),
        boxes=None if boxes is None else torch.from_numpy(boxes),
        masks=None if masks is None else nhwc_to_nchw(masks),
    )
    diff = max(max_abs_diff(sparse, t_sparse), max_abs_diff(dense, nchw_to_nhwc(t_dense)))
    assert diff <= TOL
    return diff


def test_prompt_encoder_clicks(ref, prompt_encoder):
    # labels 2/3 are box corners given as points (how sam2's predictors pass boxes); -1 is padding
    points = _clicks(_rng(1), [[1, 0, 1, 2, 3], [0, 1, -1, -1, 1]])
    _compare_prompt_encoder(ref, prompt_encoder, points, None, None)


def test_prompt_encoder_box(ref, prompt_encoder):
    _compare_prompt_encoder(ref, prompt_encoder, None, _boxes(_rng(2), 3), None)


def test_prompt_encoder_box_and_clicks(ref, prompt_encoder):
    rng = _rng(3)
    _compare_prompt_encoder(ref, prompt_encoder, _clicks(rng, [[1, 0], [1, 1]]), _boxes(rng, 2), None)


def test_prompt_encoder_mask(ref, prompt_encoder):
    rng = _rng(4)
    masks = 3 * _normal(rng, 2, 4 * EMBED_SIZE, 4 * EMBED_SIZE, 1)
    _compare_prompt_encoder(ref, prompt_encoder, _clicks(rng, [[1], [0]]), None, masks)
    _compare_prompt_encoder(ref, prompt_encoder, None, None, masks)


def test_prompt_encoder_without_prompts(ref, prompt_encoder):
    # SAM2Base._forward_sam_heads without clicks: one zero point labelled -1, then the appended padding point
    no_point = (np.zeros((2, 1, 2), np.float32), -np.ones((2, 1), np.int32))
    _compare_prompt_encoder(ref, prompt_encoder, no_point, None, None)
    # nothing at all: an empty sparse sequence and the no-mask embedding, batch size 1
    model, params = prompt_encoder
    sparse, dense = model.apply(params, None, None, None)
    assert sparse.shape == (1, 0, DIM) and dense.shape == (1, EMBED_SIZE, EMBED_SIZE, DIM)
    _compare_prompt_encoder(ref, prompt_encoder, None, None, None)


def test_prompt_encoder_dense_pe(ref, prompt_encoder):
    model, params = prompt_encoder
    pe = model.apply(params, method=PromptEncoder.get_dense_pe)
    assert pe.shape == (1, EMBED_SIZE, EMBED_SIZE, DIM)
    assert max_abs_diff(pe, nchw_to_nhwc(ref.sam_prompt_encoder.get_dense_pe())) <= TOL


def test_prompt_encoder_under_jit(prompt_encoder):
    model, params = prompt_encoder
    points = _clicks(_rng(5), [[1, 0, -1]])
    jitted = jax.jit(lambda p, coords, labels: model.apply(p, (coords, labels), None, None))
    for got, want in zip(jitted(params, *points), model.apply(params, points, None, None)):
        assert max_abs_diff(got, want) <= 1e-6


@pytest.mark.parametrize(
    "points, boxes, masks, match",
    [
        ((np.zeros((2, 3)), np.ones((2, 3), np.int32)), None, None, "coords must be"),
        ((np.zeros((2, 3, 3)), np.ones((2, 3), np.int32)), None, None, "coords must be"),
        ((np.zeros((2, 3, 2)), np.ones((2, 4), np.int32)), None, None, "labels must be"),
        ((np.zeros((2, 3, 2)), np.ones((2,), np.int32)), None, None, "labels must be"),
        ((np.zeros((1, 2, 2)), np.array([[1, 4]], np.int32)), None, None, r"in \{-1, 0, 1, 2, 3\}.*\[4\]"),
        ((np.zeros((1, 2, 2)), np.array([[-2, 1]], np.int32)), None, None, r"got \[-2\]"),
        ((np.zeros((2, 1, 2)), np.ones((2, 1), np.int32)), np.zeros((3, 4)), None, "different batch sizes"),
        (None, np.zeros((2, 2, 2)), None, "boxes must be"),
        (None, None, np.zeros((1, 64, 64)), "masks must be"),
        (None, None, np.zeros((1, 32, 32, 1)), "masks must be"),
    ],
)
def test_prompt_encoder_rejects_bad_prompts(prompt_encoder, points, boxes, masks, match):
    model, params = prompt_encoder
    with pytest.raises(ValueError, match=match):
        model.apply(params, points, boxes, masks)


# ---------------------------------------------------------------------------------------------------------------
# Mask decoder
# ---------------------------------------------------------------------------------------------------------------

# Flax attributes for the torch decoders below; "sam2.1" is the decoder of sam21_reference (the sam2.1 yaml).
DECODER_CONFIGS = {
    "sam2.1": dict(
        use_high_res_features=True,
        iou_prediction_use_sigmoid=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True,
    ),
    "sam1": dict(),  # all options off: no high-res features, no object score, plain IoU head
    "linear_obj_head": dict(pred_obj_scores=True, use_multimask_token_for_obj_ptr=True),
}


def _torch_decoder(ref, config_name: str) -> TorchMaskDecoder:
    if config_name == "sam2.1":
        module = copy.deepcopy(ref.sam_mask_decoder)
        # build_sam2 turns the stability fallback on; it has its own test below
        module.dynamic_multimask_via_stability = False
        return module
    transformer = TorchTwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=2048, num_heads=8)
    module = TorchMaskDecoder(transformer_dim=DIM, transformer=transformer, **DECODER_CONFIGS[config_name])
    return perturb_(module.eval(), seed=1)


def _decoder_inputs(rng: np.random.Generator, batch_size: int, num_prompts: int = 3, image_batch: int | None = None):
    image_batch = batch_size if image_batch is None else image_batch
    h = EMBED_SIZE
    return dict(
        image_embeddings=_normal(rng, image_batch, h, h, DIM),
        image_pe=_normal(rng, 1, h, h, DIM),
        sparse_prompt_embeddings=_normal(rng, batch_size, num_prompts, DIM),
        dense_prompt_embeddings=_normal(rng, batch_size, h, h, DIM),
        high_res_features=[_normal(rng, image_batch, 4 * h, 4 * h, DIM // 8), _normal(rng, image_batch, 2 * h, 2 * h, DIM // 4)],
    )


def _flax_decoder(torch_module: TorchMaskDecoder, **attributes):
    model = MaskDecoder(**attributes)
    inputs = _decoder_inputs(_rng(), 1)
    if not model.use_high_res_features:
        inputs["high_res_features"] = None
    return model, _convert(torch_module, model, **inputs, multimask_output=False, repeat_image=False)


def _torch_kwargs(inputs: dict) -> dict:
    high_res = inputs["high_res_features"]
    return dict(
        image_embeddings=nhwc_to_nchw(inputs["image_embeddings"]),
        image_pe=nhwc_to_nchw(inputs["image_pe"]),
        sparse_prompt_embeddings=torch.from_numpy(inputs["sparse_prompt_embeddings"]),
        dense_prompt_embeddings=nhwc_to_nchw(inputs["dense_prompt_embeddings"]),
        high_res_features=None if high_res is None else [nhwc_to_nchw(x) for x in high_res],
    )


def _assert_decoder_parity(torch_module, flax_decoder, inputs, multimask_output, repeat_image=False, **kwargs):
    model, params = flax_decoder
    got = model.apply(params, **inputs, multimask_output=multimask_output, repeat_image=repeat_image, **kwargs)
    want = torch_module(**_torch_kwargs(inputs), multimask_output=multimask_output, repeat_image=repeat_image)
    diffs = [max_abs_diff(g, w) for g, w in zip(got, want)]
    assert max(diffs) <= TOL, diffs
    return got


@pytest.fixture(scope="module", params=sorted(DECODER_CONFIGS))
def decoder_pair(request, ref):
    torch_module = _torch_decoder(ref, request.param)
    return torch_module, _flax_decoder(torch_module, **DECODER_CONFIGS[request.param])


@pytest.mark.parametrize("multimask_output", [False, True])
def test_mask_decoder(decoder_pair, multimask_output):
    torch_module, flax_decoder = decoder_pair
    inputs = _decoder_inputs(_rng(10), batch_size=2)
    if not flax_decoder[0].use_high_res_features:
        inputs["high_res_features"] = None
    masks, iou, tokens, obj = _assert_decoder_parity(torch_module, flax_decoder, inputs, multimask_output)
    num_masks = 3 if multimask_output else 1
    num_tokens = 3 if multimask_output and flax_decoder[0].use_multimask_token_for_obj_ptr else 1
    assert masks.shape == (2, num_masks, 4 * EMBED_SIZE, 4 * EMBED_SIZE) and iou.shape == (2, num_masks)
    assert tokens.shape == (2, num_tokens, DIM) and obj.shape == (2, 1)


@pytest.fixture(scope="module")
def sam21_decoder(ref):
    torch_module = _torch_decoder(ref, "sam2.1")
    return torch_module, _flax_decoder(torch_module, **DECODER_CONFIGS["sam2.1"])


def test_mask_decoder_repeat_image(sam21_decoder):
    torch_module, flax_decoder = sam21_decoder
    inputs = _decoder_inputs(_rng(11), batch_size=2, image_batch=1)
    masks = _assert_decoder_parity(torch_module, flax_decoder, inputs, multimask_output=True, repeat_image=True)[0]
    assert masks.shape[0] == 2


def test_project_high_res_features(sam21_decoder):
    torch_module, (model, params) = sam21_decoder
    rng = _rng(12)
    feat_s0, feat_s1 = _normal(rng, 2, 64, 64, DIM), _normal(rng, 2, 32, 32, DIM)
    got_s0, got_s1 = model.apply(params, feat_s0, feat_s1, method=MaskDecoder.project_high_res_features)
    assert max_abs_diff(got_s0, nchw_to_nhwc(torch_module.conv_s0(nhwc_to_nchw(feat_s0)))) <= TOL
    assert max_abs_diff(got_s1, nchw_to_nhwc(torch_module.conv_s1(nhwc_to_nchw(feat_s1)))) <= TOL


def test_mask_decoder_dynamic_multimask_via_stability(sam21_decoder):
    torch_module, (model, params) = sam21_decoder
    inputs = _decoder_inputs(_rng(12), batch_size=2)
    # A threshold in the widest gap between the samples' stability scores, so that both outcomes occur and
    # logits within float error of +-delta cannot flip any decision.
    all_masks = torch_module.predict_masks(**_torch_kwargs(inputs), repeat_image=False)[0]
    scores = torch_module._get_stability_scores(all_masks[:, 0]).numpy()
    sorted_scores = np.sort(scores)
    gap = int(np.argmax(np.diff(sorted_scores)))
    assert sorted_scores[gap + 1] - sorted_scores[gap] > 1e-2, sorted_scores
    thresh = float(sorted_scores[gap] + sorted_scores[gap + 1]) / 2
    assert 0 < np.sum(scores >= thresh) < len(scores)

    dynamic_torch = copy.deepcopy(torch_module)
    dynamic_torch.dynamic_multimask_via_stability = True
    dynamic_torch.dynamic_multimask_stability_thresh = thresh
    dynamic_model = model.clone(dynamic_multimask_via_stability=True, dynamic_multimask_stability_thresh=thresh)
    masks = _assert_decoder_parity(dynamic_torch, (dynamic_model, params), inputs, multimask_output=False)[0]

    # jittable: tracing (no compilation needed) fails on any Python branch on data
    traced = jax.eval_shape(functools.partial(dynamic_model.apply, multimask_output=False, repeat_image=False),
                            params, **inputs)
    assert traced[0].shape == masks.shape
    # torch's training mode (our train=True) skips the fallback
    dynamic_torch.train()
    _assert_decoder_parity(dynamic_torch, (dynamic_model, params), inputs, multimask_output=False, train=True)


def test_two_way_transformer_all_true_token_mask_is_no_mask(sam21_decoder):
    _, (_, params) = sam21_decoder
    transformer = TwoWayTransformer(depth=2, embedding_dim=DIM, num_heads=8, mlp_dim=2048)
    variables = {"params": params["params"]["transformer"]}
    rng = _rng(14)
    h = EMBED_SIZE
    image, pe, tokens = _normal(rng, 2, h, h, DIM), _normal(rng, 1, h, h, DIM), _normal(rng, 2, 9, DIM)
    plain = transformer.apply(variables, image, pe, tokens)
    masked = transformer.apply(variables, image, pe, tokens, token_mask=np.ones((2, 9), bool))
    for a, b in zip(plain, masked):
        assert max_abs_diff(a, b) == 0.0


def test_mask_decoder_extra_tokens(sam21_decoder):
    _, (model, params) = sam21_decoder
    rng = _rng(15)
    inputs = _decoder_inputs(rng, batch_size=2)
    extra = _normal(rng, 2, 3, DIM)

    def decode(**kwargs):
        return model.apply(params, **inputs, multimask_output=True, repeat_image=False, **kwargs)

    def assert_same(a, b, tol=1e-5):
        diffs = [max_abs_diff(x, y) for x, y in zip(a, b)]
        assert max(diffs) <= tol, diffs

    plain = decode()
    with_extra = decode(extra_tokens=extra)
    assert max_abs_diff(with_extra[0], plain[0]) > 1e-3  # extra tokens do take part
    assert_same(decode(extra_tokens=extra, extra_token_mask=np.ones((2, 3), bool)), with_extra, tol=0.0)
    # all extra tokens masked out: SAM 2.1's result
    assert_same(decode(extra_tokens=extra, extra_token_mask=np.zeros((2, 3), bool)), plain)
    # a masked-out token, whatever its value, changes nothing; masks differ per sample (padding)
    mask = np.array([[True, True, False], [True, False, False]])
    garbage = extra.copy()
    garbage[~mask] = 1e3 * _normal(rng, int((~mask).sum()), DIM)
    padded = decode(extra_tokens=garbage, extra_token_mask=mask)
    assert_same(padded, decode(extra_tokens=extra, extra_token_mask=mask))
    # sample 1 keeps only its first extra token: the same as passing that token alone
    first_only = decode(extra_tokens=extra[:, :1])
    assert_same([x[1] for x in padded], [x[1] for x in first_only])


def test_mask_decoder_rejects_bad_inputs(sam21_decoder):
    _, (model, params) = sam21_decoder
    inputs = _decoder_inputs(_rng(16), batch_size=2)
    decode = functools.partial(model.apply, params, multimask_output=True, repeat_image=False)
    with pytest.raises(ValueError, match="extra_token_mask"):
        decode(**inputs, extra_token_mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="extra_token_mask"):
        decode(**inputs, extra_tokens=np.zeros((2, 3, DIM), np.float32), extra_token_mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="high_res_features"):
        decode(**{**inputs, "high_res_features": None})
    with pytest.raises(ValueError, match="image_pe"):
        decode(**{**inputs, "image_pe": np.zeros((2, EMBED_SIZE, EMBED_SIZE, DIM), np.float32)})
    with pytest.raises(ValueError, match="repeat_image"):
        decode(**{**inputs, "image_embeddings": inputs["image_embeddings"][:1]})
