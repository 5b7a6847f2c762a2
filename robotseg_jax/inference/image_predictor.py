"""SAM2ImagePredictor (sam2/sam2_image_predictor.py) for the Flax SAM 2.1: embed an image once, prompt it many times.

    predictor = build_image_predictor("sam2.1_hiera_t", "sam2.1_hiera_tiny.pt")   # robotseg_jax.inference
    predictor.set_image(image)                       # HWC uint8 RGB or PIL
    masks, scores, logits = predictor.predict(point_coords=[[500, 375]], point_labels=[1])

Same math and the same numpy outputs as sam2: masks `[C, H, W]` (`[B, C, H, W]` for a batch of prompt sets)
as float32 0/1 (logits with `return_logits=True`), IoU predictions `[C]`, low-res logits `[C, S/4, S/4]` that can
be fed back as `mask_input`. The image encoder is compiled once, the prompt encoder and mask decoder once per
prompt shape (number of points, number of prompt sets, mask or not, multimask or not).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from robotseg_jax.constants import BOX_CORNER_LABELS, NEGATIVE_LABEL, PAD_LABEL, POSITIVE_LABEL, PROMPT_LOGITS_CLAMP
from robotseg_jax.inference import transforms
from robotseg_jax.modeling.config import SAM2Config
from robotseg_jax.modeling.sam2 import SAM2Model

# What sam2's `build_sam2(apply_postprocessing=True)` sets on top of the yaml for the image predictor: a single
# requested mask falls back to the best of the three multimask outputs when it is unstable.
IMAGE_PREDICTOR_OVERRIDES = {"dynamic_multimask_via_stability": True}

# Point labels a caller may give: background, foreground, and padding for prompt sets of unequal length.
_USER_POINT_LABELS = (PAD_LABEL, NEGATIVE_LABEL, POSITIVE_LABEL)

ImageLike = np.ndarray | Image.Image


def _encode(model: SAM2Model, variables: dict, images: jax.Array) -> tuple[jax.Array, tuple]:
    """Normalised `[B, S, S, 3]` -> (the image embedding `[B, h, w, C]`: the no-memory features a video's first
    frame also gets, and the projected high-res features), as SAM2ImagePredictor.set_image."""

    def run(module: SAM2Model):
        features = module.forward_image(images)
        return module.no_memory_features(features), features.high_res_features

    return model.apply(variables, method=run)


def _decode(
    model: SAM2Model,
    variables: dict,
    image_embed: jax.Array,
    high_res_features: tuple,
    point_coords: jax.Array | None,
    point_labels: jax.Array | None,
    mask_input: jax.Array | None,
    multimask_output: bool,
) -> tuple[jax.Array, jax.Array]:
    """Prompt encoder + mask decoder for `B` prompt sets on one image (`[1, h, w, C]`): low-res logits
    `[B, M, 4h, 4w]` and IoU predictions `[B, M]`, as SAM2ImagePredictor._predict (no object-score masking)."""

    def run(module: SAM2Model):
        points = None if point_coords is None else (point_coords, point_labels)
        low_res, ious, _, _ = module.decode_masks(
            image_embed, high_res_features, points, mask_input, multimask_output, repeat_image=True
        )
        return low_res, ious

    return model.apply(variables, method=run)


class ImagePredictor:
    """SAM2ImagePredictor's API on a Flax SAM 2.1 model and its params.

    mask_threshold: logits above it are foreground. max_hole_area / max_sprinkle_area: when > 0, background /
    foreground regions of at most that many low-res pixels are flipped before upsampling (sam2's defaults: 0).
    """

    def __init__(
        self,
        config: SAM2Config,
        params: dict,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
    ) -> None:
        self.config = config
        self.model = SAM2Model(config)
        self.variables = {"params": params}
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self._encode = jax.jit(functools.partial(_encode, self.model))
        self._decode = jax.jit(functools.partial(_decode, self.model), static_argnames="multimask_output")
        self.reset_predictor()

    @property
    def mask_input_size(self) -> int:
        """Side of the low-res logits (`mask_input`, `low_res_masks`): image_size / 4."""
        return 4 * self.config.image_embedding_size

    # ------------------------------------------------------------------ images
    def reset_predictor(self) -> None:
        """Forgets the current image(s) and their embeddings."""
        self._features: dict | None = None
        self._orig_hw: list[tuple[int, int]] = []
        self._is_image_set = False
        self._is_batch = False

    def set_image(self, image: ImageLike) -> None:
        """Computes the embedding of one RGB image (`[H, W, 3]` uint8 array or PIL image) for `predict`."""
        self._set_images([image])
        self._is_batch = False

    def set_image_batch(self, images: Sequence[ImageLike]) -> None:
        """Computes the embeddings of several RGB images (sizes may differ) for `predict_batch`."""
        if isinstance(images, (np.ndarray, Image.Image)) or not len(images):
            raise ValueError("set_image_batch takes a non-empty list of images; use set_image for one image")
        self._set_images(list(images))
        self._is_batch = True

    def _set_images(self, images: list[ImageLike]) -> None:
        self.reset_predictor()
        arrays = [transforms.as_rgb_array(image) for image in images]
        # One image per encoder call: a single compiled program serves lists of any length.
        encoded = [
            self._encode(self.variables, transforms.preprocess_image(a, self.config.image_size)[None]) for a in arrays
        ]
        image_embeds, high_res = zip(*encoded)
        self._features = {
            "image_embed": jnp.concatenate(image_embeds),
            "high_res_feats": tuple(jnp.concatenate(level) for level in zip(*high_res)),
        }
        self._orig_hw = [a.shape[:2] for a in arrays]
        self._is_image_set = True

    def get_image_embedding(self) -> jax.Array:
        """The image embedding(s) in sam2's layout `[B, C, h, w]` (C = 256, h = w = image_size / 16)."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self._features["image_embed"].transpose(0, 3, 1, 2)

    # ------------------------------------------------------------------ prompts
    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the image given to `set_image`.

        point_coords `[N, 2]` (x, y) in image pixels (in [0, 1] with normalize_coords=False) with point_labels
        `[N]` (1 foreground, 0 background); box `[4]` (x0, y0, x1, y1); mask_input `[1, S/4, S/4]` low-res logits
        of a previous prediction. A leading batch axis B on all of them gives B prompt sets at once.

        Returns masks `[C, H, W]`, IoU predictions `[C]` and low-res logits `[C, S/4, S/4]` (C = 3 with
        multimask_output, else 1), with the leading B axis when B > 1.
        """
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if self._is_batch:
            raise RuntimeError("predict works on the image of .set_image(...); use predict_batch after set_image_batch")
        prompts = (point_coords, point_labels, box, mask_input)
        return self._predict(0, *prompts, multimask_output, return_logits, normalize_coords)

    def predict_batch(
        self,
        point_coords_batch: Sequence[np.ndarray] | None = None,
        point_labels_batch: Sequence[np.ndarray] | None = None,
        box_batch: Sequence[np.ndarray] | None = None,
        mask_input_batch: Sequence[np.ndarray] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """`predict` for each image given to `set_image_batch`, with one prompt entry per image; lists out."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image_batch(...) before mask prediction.")
        if not self._is_batch:
            raise RuntimeError("predict_batch needs images set with .set_image_batch(...); use predict after set_image")
        num_images = len(self._orig_hw)
        prompt_lists = {
            "point_coords_batch": point_coords_batch,
            "point_labels_batch": point_labels_batch,
            "box_batch": box_batch,
            "mask_input_batch": mask_input_batch,
        }
        for name, values in prompt_lists.items():
            if values is not None and len(values) != num_images:
                raise ValueError(f"{name} has {len(values)} entries for {num_images} images")
        outputs = []
        for i in range(num_images):
            prompts = [None if values is None else values[i] for values in prompt_lists.values()]
            outputs.append(self._predict(i, *prompts, multimask_output, return_logits, normalize_coords))
        masks, ious, low_res = zip(*outputs)
        return list(masks), list(ious), list(low_res)

    def _predict(
        self,
        image_index: int,
        point_coords,
        point_labels,
        box,
        mask_input,
        multimask_output: bool,
        return_logits: bool,
        normalize_coords: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        orig_hw = self._orig_hw[image_index]
        coords, labels = self._prompt_points(point_coords, point_labels, box, normalize_coords, orig_hw)
        mask = self._mask_prompt(mask_input, batch=1 if coords is None else coords.shape[0])
        image_embed = self._features["image_embed"][image_index : image_index + 1]
        high_res = tuple(f[image_index : image_index + 1] for f in self._features["high_res_feats"])
        low_res, ious = self._decode(
            self.variables, image_embed, high_res, coords, labels, mask, multimask_output=bool(multimask_output)
        )
        if self.max_hole_area > 0 or self.max_sprinkle_area > 0:
            cleaned = transforms.remove_small_regions(
                np.asarray(low_res), self.mask_threshold, self.max_hole_area, self.max_sprinkle_area
            )
            masks = transforms.upsample_masks(jnp.asarray(cleaned), tuple(orig_hw))
        else:
            masks = transforms.upsample_masks(low_res, tuple(orig_hw))
        masks = np.asarray(masks)
        if not return_logits:
            masks = (masks > self.mask_threshold).astype(np.float32)  # sam2 returns 0/1 as float32
        # sam2 clamps the returned low-res logits so that they are safe to feed back as mask_input
        low_res = np.clip(np.asarray(low_res), -PROMPT_LOGITS_CLAMP, PROMPT_LOGITS_CLAMP)
        ious = np.asarray(ious)
        if ious.shape[0] == 1:  # one prompt set: no batch axis, as sam2's squeeze(0)
            return masks[0], ious[0], low_res[0]
        return masks, ious, low_res

    def _prompt_points(
        self, point_coords, point_labels, box, normalize_coords: bool, orig_hw: tuple[int, int]
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Clicks and box as one point prompt `[B, N, 2]`, `[B, N]` in model-input pixels; the box's corners
        (labels 2, 3) come first, as sam2 merges them."""
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        coords = labels = None
        if point_coords is not None:
            coords = np.asarray(point_coords, dtype=np.float32)
            labels = np.asarray(point_labels)
            if coords.ndim not in (2, 3) or coords.shape[-1] != 2:
                raise ValueError(f"point_coords must be [N, 2] or [B, N, 2] (x, y), got shape {coords.shape}")
            if labels.shape != coords.shape[:-1]:
                raise ValueError(f"point_labels must have shape {coords.shape[:-1]} to match point_coords, "
                                 f"got {labels.shape}")
            if not np.isin(labels, _USER_POINT_LABELS).all():
                bad = sorted(set(np.unique(labels).tolist()) - set(_USER_POINT_LABELS))
                raise ValueError(f"point_labels must be 1 (foreground), 0 (background) or -1 (padding), got {bad}; "
                                 "give boxes with box=")
            coords = transforms.transform_coords(coords, orig_hw, self.config.image_size, normalize_coords)
            labels = labels.astype(np.int32)
            if coords.ndim == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            box = np.asarray(box, dtype=np.float32)
            if box.ndim not in (1, 2) or box.shape[-1] != 4:
                raise ValueError(f"box must be [4] or [B, 4] (x0, y0, x1, y1), got shape {box.shape}")
            corners = transforms.transform_coords(box.reshape(-1, 2, 2), orig_hw, self.config.image_size,
                                                  normalize_coords)
            corner_labels = np.tile(np.array([BOX_CORNER_LABELS], np.int32), (corners.shape[0], 1))
            if coords is None:
                coords, labels = corners, corner_labels
            elif corners.shape[0] != coords.shape[0]:
                raise ValueError(f"{corners.shape[0]} boxes for {coords.shape[0]} point sets: give one box per set")
            else:
                coords = np.concatenate([corners, coords], axis=1)
                labels = np.concatenate([corner_labels, labels], axis=1)
        return coords, labels

    def _mask_prompt(self, mask_input, batch: int) -> np.ndarray | None:
        """`[1, s, s]` or `[B, 1, s, s]` low-res logits -> the prompt encoder's `[B, s, s, 1]`."""
        if mask_input is None:
            return None
        mask = np.asarray(mask_input, dtype=np.float32)
        s = self.mask_input_size
        if mask.ndim == 3:
            mask = mask[None]
        if mask.ndim != 4 or mask.shape[1:] != (1, s, s):
            raise ValueError(f"mask_input must be [1, {s}, {s}] or [B, 1, {s}, {s}] low-res logits (a previous "
                             f"prediction's low_res_masks[i][None]), got shape {np.shape(mask_input)}")
        if mask.shape[0] not in (1, batch):
            raise ValueError(f"{mask.shape[0]} mask inputs for {batch} prompt sets")
        # One mask for several point sets is shared, as torch broadcasting does in sam2.
        return np.broadcast_to(mask.transpose(0, 2, 3, 1), (batch, s, s, 1))
