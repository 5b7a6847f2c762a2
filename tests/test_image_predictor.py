"""ImagePredictor against sam2 1.1.0's SAM2ImagePredictor math (float32, random weights, image_size 128).

sam2/utils/transforms.py imports torchvision, which does not install beside the local torch build, so
SAM2ImagePredictor itself cannot be imported. `TorchImagePredictor` below makes the same calls on the reference
SAM2Base as SAM2ImagePredictor.set_image / _prep_prompts / _predict, with SAM2Transforms' torchvision ops
written as the torch functions they call (ToTensor = /255, Resize = interpolate(bilinear, antialias=True)).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robotseg_jax.checkpoints import convert
from robotseg_jax.inference import transforms
from robotseg_jax.inference import ImagePredictor, build_image_predictor
from robotseg_jax.modeling.config import get_model_config
from tests.reference import build_reference, max_abs_diff

IMAGE_SIZE = 128
LOW_RES = IMAGE_SIZE // 4
TOL = 1e-4


def _torch_preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """SAM2Transforms: ToTensor, Resize((size, size)) on the float tensor, Normalize(ImageNet)."""
    x = torch.from_numpy(image.transpose(2, 0, 1).copy()).float() / 255
    x = F.interpolate(x[None], (size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    mean = torch.tensor(transforms.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(transforms.IMAGENET_STD)[:, None, None]
    return (x - mean) / std


class TorchImagePredictor:
    """SAM2ImagePredictor's set_image_batch and _predict on the reference SAM2Base, prompts already as tensors."""

    def __init__(self, model, images: list[np.ndarray]):
        self.model = model
        self.orig_hw = [image.shape[:2] for image in images]
        batch = torch.stack([_torch_preprocess(image, model.image_size) for image in images])
        backbone_out = model.forward_image(batch)
        _, vision_feats, _, feat_sizes = model._prepare_backbone_features(backbone_out)
        vision_feats[-1] = vision_feats[-1] + model.no_mem_embed
        feats = [
            feat.permute(1, 2, 0).view(len(images), -1, *size)
            for feat, size in zip(vision_feats[::-1], feat_sizes[::-1])
        ][::-1]
        self.features = {"image_embed": feats[-1], "high_res_feats": feats[:-1]}

    def predict(self, img_idx=0, point_coords=None, point_labels=None, box=None, mask_input=None, multimask=True):
        """(upsampled logits, ious, clamped low-res logits) as SAM2ImagePredictor.predict(return_logits=True)."""
        h, w = self.orig_hw[img_idx]
        scale = torch.tensor([w, h], dtype=torch.float32)
        concat_points = None
        if point_coords is not None:
            coords = torch.as_tensor(point_coords, dtype=torch.float32) / scale * self.model.image_size
            labels = torch.as_tensor(point_labels, dtype=torch.int)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
            concat_points = (coords, labels)
        if box is not None:
            box_coords = torch.as_tensor(box, dtype=torch.float32).reshape(-1, 2, 2) / scale * self.model.image_size
            box_labels = torch.tensor([[2, 3]], dtype=torch.int).repeat(box_coords.size(0), 1)
            if concat_points is not None:
                coords, labels = concat_points
                concat_points = (torch.cat([box_coords, coords], 1), torch.cat([box_labels, labels], 1))
            else:
                concat_points = (box_coords, box_labels)
        if mask_input is not None:
            mask_input = torch.as_tensor(mask_input, dtype=torch.float32)
            if mask_input.ndim == 3:
                mask_input = mask_input[None]
        sparse, dense = self.model.sam_prompt_encoder(points=concat_points, boxes=None, masks=mask_input)
        batched_mode = concat_points is not None and concat_points[0].shape[0] > 1
        low_res, ious, _, _ = self.model.sam_mask_decoder(
            image_embeddings=self.features["image_embed"][img_idx].unsqueeze(0),
            image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=batched_mode,
            high_res_features=[f[img_idx].unsqueeze(0) for f in self.features["high_res_feats"]],
        )
        masks = F.interpolate(low_res, self.orig_hw[img_idx], mode="bilinear", align_corners=False)
        low_res = torch.clamp(low_res, -32.0, 32.0)
        return masks.squeeze(0), ious.squeeze(0), low_res.squeeze(0)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth gradient with noise: a plausible photo-like input, different per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (h + w)], -1) * 200
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


@functools.cache
def _setup():
    ref = build_reference("sam2.1_hiera_t", IMAGE_SIZE, seed=3)
    assert ref.sam_mask_decoder.dynamic_multimask_via_stability  # build_sam2's default post-processing
    params = convert.torch_to_params(ref.state_dict(), get_model_config("sam2.1_hiera_t", image_size=IMAGE_SIZE))
    return ref, build_image_predictor("sam2.1_hiera_t", params=params, image_size=IMAGE_SIZE)


IMAGE = _image(72, 100, seed=0)


@functools.cache
def _torch_single_image() -> TorchImagePredictor:
    return TorchImagePredictor(_setup()[0], [IMAGE])


def _single_image() -> tuple[ImagePredictor, TorchImagePredictor]:
    """Both predictors on IMAGE (setting it again is one compiled encoder call)."""
    _, predictor = _setup()
    predictor.set_image(IMAGE)
    return predictor, _torch_single_image()


def _assert_matches(ours, theirs, expected_masks_shape):
    masks, ious, low_res = ours
    t_masks, t_ious, t_low_res = theirs
    assert masks.shape == expected_masks_shape and masks.dtype == np.float32
    diffs = {
        "masks": max_abs_diff(t_masks, masks),
        "ious": max_abs_diff(t_ious, ious),
        "low_res": max_abs_diff(t_low_res, low_res),
    }
    assert all(d <= TOL for d in diffs.values()), diffs
    return diffs


PROMPTS = {
    "one_click_multimask": {"point_coords": [[40.0, 30.0]], "point_labels": [1], "multimask": True},
    "three_clicks_single_mask": {
        "point_coords": [[40.0, 30.0], [70.5, 50.0], [10.0, 60.0]], "point_labels": [1, 0, 1], "multimask": False
    },
    "box": {"box": [12.0, 8.0, 80.0, 60.0], "multimask": False},
    "box_and_click": {
        "box": [12.0, 8.0, 80.0, 60.0], "point_coords": [[30.0, 25.0]], "point_labels": [1], "multimask": False
    },
    "two_boxes": {"box": [[12.0, 8.0, 80.0, 60.0], [0.0, 0.0, 50.0, 70.0]], "multimask": True},
}


@pytest.mark.reference
@pytest.mark.parametrize("name", PROMPTS)
def test_predict_matches_reference(name):
    predictor, torch_predictor = _single_image()
    prompt = dict(PROMPTS[name])
    multimask = prompt.pop("multimask")
    ours = predictor.predict(**prompt, multimask_output=multimask, return_logits=True)
    theirs = torch_predictor.predict(**prompt, multimask=multimask)
    num_masks = 3 if multimask else 1
    batch = (2,) if name == "two_boxes" else ()
    _assert_matches(ours, theirs, (*batch, num_masks, *IMAGE.shape[:2]))
    assert ours[2].shape == (*batch, num_masks, LOW_RES, LOW_RES)


@pytest.mark.reference
def test_mask_input_from_previous_prediction():
    predictor, torch_predictor = _single_image()
    masks, ious, low_res = predictor.predict(point_coords=[[40.0, 30.0]], point_labels=[1])
    assert set(np.unique(masks)) <= {0.0, 1.0}
    mask_input = low_res[np.argmax(ious)][None]
    click = {"point_coords": [[40.0, 30.0], [60.0, 20.0]], "point_labels": [1, 1], "mask_input": mask_input}
    ours = predictor.predict(**click, multimask_output=False, return_logits=True)
    _assert_matches(ours, torch_predictor.predict(**click, multimask=False), (1, *IMAGE.shape[:2]))
    # thresholded masks are the logits > 0
    binary = predictor.predict(**click, multimask_output=False)[0]
    assert np.array_equal(binary, (ours[0] > 0).astype(np.float32))


@pytest.mark.reference
def test_image_batch_matches_reference():
    ref, predictor = _setup()
    images = [_image(72, 100, seed=1), _image(150, 90, seed=2)]  # one upsampled, one downsampled to 128
    predictor.set_image_batch(images)
    torch_predictor = TorchImagePredictor(ref, images)
    clicks = [np.array([[40.0, 30.0]]), np.array([[20.0, 140.0]])]
    labels = [np.array([1]), np.array([1])]
    masks, ious, low_res = predictor.predict_batch(clicks, labels, multimask_output=True, return_logits=True)
    assert predictor.get_image_embedding().shape == (2, 256, IMAGE_SIZE // 16, IMAGE_SIZE // 16)
    for i, image in enumerate(images):
        theirs = torch_predictor.predict(i, clicks[i], labels[i], multimask=True)
        _assert_matches((masks[i], ious[i], low_res[i]), theirs, (3, *image.shape[:2]))


@pytest.mark.reference
@pytest.mark.parametrize("hw", [(72, 100), (300, 411), (128, 128), (40, 700)])
def test_preprocessing_matches_torchvision_ops(hw):
    image = _image(*hw, seed=4)
    ours = np.asarray(transforms.preprocess_image(image, IMAGE_SIZE))
    theirs = _torch_preprocess(image, IMAGE_SIZE).permute(1, 2, 0)
    assert max_abs_diff(theirs, ours) <= 1e-5


def test_remove_small_regions_flips_small_components():
    logits = -np.ones((1, 12, 12), np.float32)
    logits[0, 1:9, 1:9] = 1.0
    logits[0, 3:5, 3:5] = -1.0  # a 4-pixel hole
    logits[0, 10, 10] = logits[0, 11, 11] = 1.0  # a 2-pixel sprinkle, connected diagonally
    filled = transforms.remove_small_regions(logits, 0.0, max_hole_area=4, max_sprinkle_area=0)
    assert (filled[0, 3:5, 3:5] == 10.0).all() and filled[0, 10, 10] == 1.0
    kept = transforms.remove_small_regions(logits, 0.0, max_hole_area=3, max_sprinkle_area=2)
    assert (kept[0, 3:5, 3:5] == -1.0).all()
    assert kept[0, 10, 10] == kept[0, 11, 11] == -10.0 and kept[0, 1, 1] == 1.0


@pytest.mark.reference
def test_errors_are_readable():
    _, predictor = _setup()
    fresh = ImagePredictor(predictor.config, predictor.variables["params"])
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(point_coords=[[1.0, 2.0]], point_labels=[1])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        fresh.set_image(np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        fresh.set_image([[0, 0, 0]])
    predictor, _ = _single_image()
    with pytest.raises(ValueError, match=r"point_coords must be \[N, 2\]"):
        predictor.predict(point_coords=[1.0, 2.0], point_labels=[1])
    with pytest.raises(ValueError, match="point_labels must have shape"):
        predictor.predict(point_coords=[[1.0, 2.0]], point_labels=[1, 0])
    with pytest.raises(ValueError, match=r"got \[2, 5\]"):
        predictor.predict(point_coords=[[1.0, 2.0], [3.0, 4.0]], point_labels=[5, 2])
    with pytest.raises(ValueError, match="given together"):
        predictor.predict(point_coords=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="box must be"):
        predictor.predict(box=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="2 boxes for 1 point sets"):
        predictor.predict(box=np.zeros((2, 4)), point_coords=[[[1.0, 2.0]]], point_labels=[[1]])
    with pytest.raises(ValueError, match=rf"mask_input must be \[1, {LOW_RES}, {LOW_RES}\]"):
        predictor.predict(mask_input=np.zeros((1, 256, 256)))
    with pytest.raises(RuntimeError, match="set_image_batch"):
        predictor.predict_batch([np.zeros((1, 2))], [np.ones(1)])
    predictor.set_image_batch([IMAGE, IMAGE])
    with pytest.raises(ValueError, match="point_coords_batch has 1 entries for 2 images"):
        predictor.predict_batch([np.zeros((1, 2))], [np.ones(1)])
    with pytest.raises(RuntimeError, match="use predict_batch"):
        predictor.predict(point_coords=[[1.0, 2.0]], point_labels=[1])
