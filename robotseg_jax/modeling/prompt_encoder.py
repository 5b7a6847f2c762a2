"""sam2.modeling.sam.prompt_encoder.PromptEncoder and position_encoding.PositionEmbeddingRandom.

Points and boxes become sparse tokens `[B, N, C]` (random Fourier position encoding plus a learned embedding per
label); a mask prompt becomes a dense map `[B, h, w, C]` (or a learned "no mask" embedding everywhere).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.modeling.common import PointwiseConv, gelu, layer_norm

# Point labels: -1 padding ("not a point"), 0 negative click, 1 positive click, 2/3 box top-left/bottom-right.
NOT_A_POINT = -1
NUM_POINT_LABELS = 4


class PositionEmbeddingRandom(nn.Module):
    """Fourier features of (x, y) in [0, 1] with a fixed random Gaussian frequency matrix (a buffer in sam2)."""

    num_pos_feats: int = 64
    scale: float = 1.0

    def setup(self) -> None:
        self.positional_encoding_gaussian_matrix = self.param(
            "positional_encoding_gaussian_matrix",
            lambda key, shape: self.scale * jax.random.normal(key, shape),
            (2, self.num_pos_feats),
        )

    def _pe_encoding(self, coords: jax.Array) -> jax.Array:
        """`[..., 2]` (x, y) normalised to [0, 1] -> `[..., 2 * num_pos_feats]` (sin features, then cos)."""
        coords = 2 * coords - 1
        coords = 2 * np.pi * (coords @ self.positional_encoding_gaussian_matrix)
        return jnp.concatenate([jnp.sin(coords), jnp.cos(coords)], axis=-1)

    def __call__(self, size: tuple[int, int]) -> jax.Array:
        """The encoding of every pixel centre of an `(h, w)` grid: `[h, w, 2 * num_pos_feats]`."""
        h, w = size
        y = (np.arange(h, dtype=np.float32) + 0.5) / np.float32(h)
        x = (np.arange(w, dtype=np.float32) + 0.5) / np.float32(w)
        grid = np.stack(np.meshgrid(x, y, indexing="xy"), axis=-1)  # [h, w, (x, y)]
        return self._pe_encoding(jnp.asarray(grid))

    def forward_with_coords(self, coords: jax.Array, image_size: tuple[int, int]) -> jax.Array:
        """Pixel coordinates `[B, N, (x, y)]` in an image of `(H, W)` -> `[B, N, 2 * num_pos_feats]`."""
        normalised = coords.astype(jnp.float32) / jnp.array([image_size[1], image_size[0]], jnp.float32)
        return self._pe_encoding(normalised)


class PromptEncoder(nn.Module):
    """Embeds point, box and mask prompts for the mask decoder.

    Points: coords `[B, N, 2]` in input-image pixels (x, y), labels `[B, N]` in {-1, 0, 1, 2, 3}. Boxes: `[B, 4]`
    (x0, y0, x1, y1). Masks: `[B, 4h, 4w, 1]` logits. Returns sparse `[B, N', C]` and dense `[B, h, w, C]`.
    """

    embed_dim: int
    image_embedding_size: tuple[int, int]
    input_image_size: tuple[int, int]
    mask_in_chans: int = 16

    def setup(self) -> None:
        self.pe_layer = PositionEmbeddingRandom(self.embed_dim // 2)
        self.point_embeddings = [nn.Embed(1, self.embed_dim) for _ in range(NUM_POINT_LABELS)]
        self.not_a_point_embed = nn.Embed(1, self.embed_dim)
        # sam2's nn.Sequential; indices 2 and 5 are its parameter-free GELUs.
        self.mask_downscaling_0 = nn.Conv(self.mask_in_chans // 4, (2, 2), strides=(2, 2), padding="VALID")
        self.mask_downscaling_1 = layer_norm(1e-6)
        self.mask_downscaling_3 = nn.Conv(self.mask_in_chans, (2, 2), strides=(2, 2), padding="VALID")
        self.mask_downscaling_4 = layer_norm(1e-6)
        self.mask_downscaling_6 = PointwiseConv(self.embed_dim)
        self.no_mask_embed = nn.Embed(1, self.embed_dim)

    @property
    def mask_input_size(self) -> tuple[int, int]:
        return (4 * self.image_embedding_size[0], 4 * self.image_embedding_size[1])

    def get_dense_pe(self) -> jax.Array:
        """The point encoding of every cell of the image embedding: `[1, h, w, C]`."""
        return self.pe_layer(self.image_embedding_size)[None]

    def _embed_points(self, coords: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
        coords = coords + 0.5  # shift to the pixel centre
        if pad:  # without a box, sam2 appends a "not a point" token
            coords = jnp.concatenate([coords, jnp.zeros((coords.shape[0], 1, 2), coords.dtype)], axis=1)
            labels = jnp.concatenate([labels, jnp.full((labels.shape[0], 1), NOT_A_POINT, labels.dtype)], axis=1)
        embedding = self.pe_layer.forward_with_coords(coords, self.input_image_size)
        labels = labels[..., None]
        embedding = jnp.where(labels == NOT_A_POINT, self.not_a_point_embed.embedding, embedding)
        for label in range(NUM_POINT_LABELS):
            embedding = jnp.where(labels == label, embedding + self.point_embeddings[label].embedding, embedding)
        return embedding

    def _embed_boxes(self, boxes: jax.Array) -> jax.Array:
        corners = (boxes + 0.5).reshape(-1, 2, 2)  # shift to the pixel centre; [B, (top-left, bottom-right), 2]
        embedding = self.pe_layer.forward_with_coords(corners, self.input_image_size)
        corner_embeds = jnp.concatenate([self.point_embeddings[2].embedding, self.point_embeddings[3].embedding])
        return embedding + corner_embeds

    def _embed_masks(self, masks: jax.Array) -> jax.Array:
        x = gelu(self.mask_downscaling_1(self.mask_downscaling_0(masks)))
        x = gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)))
        return self.mask_downscaling_6(x)

    def __call__(
        self,
        points: tuple[jax.Array, jax.Array] | None,
        boxes: jax.Array | None,
        masks: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array]:
        batch_size = self._check_inputs(points, boxes, masks)
        if self.is_initializing():
            # setup() creates parameters on first use: create all of them, whichever prompts init was given.
            self._embed_points(jnp.zeros((1, 1, 2)), jnp.zeros((1, 1), jnp.int32), pad=True)
            self._embed_masks(jnp.zeros((1, 4, 4, 1)))
            _ = self.no_mask_embed.embedding

        sparse = [jnp.zeros((batch_size, 0, self.embed_dim))]
        if points is not None:
            sparse.append(self._embed_points(*points, pad=boxes is None))
        if boxes is not None:
            sparse.append(self._embed_boxes(boxes))
        sparse = jnp.concatenate(sparse, axis=1)

        if masks is not None:
            dense = self._embed_masks(masks)
        else:
            h, w = self.image_embedding_size
            dense = jnp.broadcast_to(self.no_mask_embed.embedding, (batch_size, h, w, self.embed_dim))
        return sparse, dense

    def _check_inputs(
        self,
        points: tuple[jax.Array, jax.Array] | None,
        boxes: jax.Array | None,
        masks: jax.Array | None,
    ) -> int:
        """Raises ValueError on malformed prompts; returns the batch size (1 without any prompt, as sam2)."""
        batch_sizes = {}
        if points is not None:
            coords, labels = points
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise ValueError(f"point coords must be [B, N, 2], got shape {coords.shape}")
            if labels.shape != coords.shape[:2]:
                raise ValueError(f"point labels must be [B, N] = {coords.shape[:2]}, got shape {labels.shape}")
            _check_label_values(labels)
            batch_sizes["points"] = coords.shape[0]
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be [B, 4] (x0, y0, x1, y1), got shape {boxes.shape}")
            batch_sizes["boxes"] = boxes.shape[0]
        if masks is not None:
            expected = (*self.mask_input_size, 1)
            if masks.ndim != 4 or masks.shape[1:] != expected:
                raise ValueError(f"masks must be [B, {expected[0]}, {expected[1]}, 1], got shape {masks.shape}")
            batch_sizes["masks"] = masks.shape[0]
        if len(set(batch_sizes.values())) > 1:
            raise ValueError(f"prompts have different batch sizes: {batch_sizes}")
        return next(iter(batch_sizes.values()), 1)


def _check_label_values(labels: jax.Array) -> None:
    """Checks that concrete labels are in {-1, 0, 1, 2, 3}; traced labels (under jit) cannot be checked."""
    try:
        values = np.asarray(labels)
    except jax.errors.TracerArrayConversionError:
        return
    bad = np.setdiff1d(np.unique(values), np.arange(NOT_A_POINT, NUM_POINT_LABELS))
    if bad.size:
        raise ValueError(f"point labels must be in {{-1, 0, 1, 2, 3}}, got {bad.tolist()}")
