"""sam2.modeling.sam.mask_decoder.MaskDecoder: prompt and image embeddings -> mask logits, IoU and object scores.

Output tokens `[obj_score_token, iou_token, mask_tokens]` are prepended to the prompt tokens and run through the
two-way transformer with the image; each mask token then drives a hypernetwork MLP whose output is dotted with the
upscaled image embedding. RobotSeg's `extra_tokens` go between the mask tokens and the prompt tokens; their outputs
are dropped, and without them the decoder is exactly SAM 2.1's.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from robotseg_jax.constants import ROBOT_CATEGORIES
from robotseg_jax.errors import UserError
from robotseg_jax.modeling.common import MLP, Dense, PointwiseConv, gelu, layer_norm
from robotseg_jax.modeling.two_way_transformer import TwoWayTransformer


class ConvTranspose2x2(nn.Module):
    """`nn.ConvTranspose2d(kernel_size=2, stride=2)` on `[B, H, W, C]` -> `[B, 2H, 2W, features]`.

    With kernel = stride each input pixel writes its own 2x2 output block, so the transposed convolution is an
    exact einsum plus a reshape. The kernel is stored `[kh, kw, in, out]` (see checkpoints.torch_keys).
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (2, 2, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        b, h, w, _ = x.shape
        # output pixel (2h + y, 2w + x); accumulated in float32 for any dtype (bfloat16: as `common.matmul`)
        out = jnp.einsum("bhwc,yxco->bhywxo", x, kernel, preferred_element_type=jnp.float32).astype(x.dtype)
        return out.reshape(b, 2 * h, 2 * w, self.features) + bias


class MaskDecoder(nn.Module):
    """SAM's mask decoder, with the two-way transformer as submodule `transformer` (names as in sam2)."""

    transformer_dim: int = 256
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    use_high_res_features: bool = False
    iou_prediction_use_sigmoid: bool = False
    pred_obj_scores: bool = False
    pred_obj_scores_mlp: bool = False
    use_multimask_token_for_obj_ptr: bool = False
    # inference-time fallback from the single mask to the best multimask output when the former is unstable
    dynamic_multimask_via_stability: bool = False
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    # the TwoWayTransformer that sam2 builds for the decoder (SAM2Base._build_sam_heads)
    transformer_depth: int = 2
    transformer_num_heads: int = 8
    transformer_mlp_dim: int = 2048

    @property
    def num_mask_tokens(self) -> int:
        return self.num_multimask_outputs + 1

    def setup(self) -> None:
        dim = self.transformer_dim
        self.transformer = TwoWayTransformer(
            self.transformer_depth, dim, self.transformer_num_heads, self.transformer_mlp_dim
        )
        self.iou_token = nn.Embed(1, dim)
        self.mask_tokens = nn.Embed(self.num_mask_tokens, dim)
        if self.pred_obj_scores:
            self.obj_score_token = nn.Embed(1, dim)
            self.pred_obj_score_head = MLP(dim, 1, 3) if self.pred_obj_scores_mlp else Dense(1)
        # sam2's nn.Sequential; indices 2 and 4 are its parameter-free GELUs.
        self.output_upscaling_0 = ConvTranspose2x2(dim // 4)
        self.output_upscaling_1 = layer_norm(1e-6)
        self.output_upscaling_3 = ConvTranspose2x2(dim // 8)
        if self.use_high_res_features:
            self.conv_s0 = PointwiseConv(dim // 8)
            self.conv_s1 = PointwiseConv(dim // 4)
        self.output_hypernetworks_mlps = [MLP(dim, dim // 8, 3) for _ in range(self.num_mask_tokens)]
        self.iou_prediction_head = MLP(
            self.iou_head_hidden_dim,
            self.num_mask_tokens,
            self.iou_head_depth,
            sigmoid_output=self.iou_prediction_use_sigmoid,
        )

    def project_high_res_features(self, feat_s0: jax.Array, feat_s1: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The 1x1 convs that sam2 applies to the stride-4 and stride-8 FPN maps in `SAM2Base.forward_image`:
        `[B, 4h, 4w, C]` -> `[B, 4h, 4w, C/8]` and `[B, 2h, 2w, C]` -> `[B, 2h, 2w, C/4]`."""
        if not self.use_high_res_features:
            raise ValueError("project_high_res_features needs a MaskDecoder with use_high_res_features=True")
        return self.conv_s0(feat_s0), self.conv_s1(feat_s1)

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: Sequence[jax.Array] | None = None,
        extra_tokens: jax.Array | None = None,
        extra_token_mask: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """image_embeddings `[B, h, w, C]` (or `[1, h, w, C]` with repeat_image), image_pe `[1, h, w, C]`,
        sparse_prompt_embeddings `[B, N, C]`, dense_prompt_embeddings `[B, h, w, C]`, high_res_features the
        projected `([B, 4h, 4w, C/8], [B, 2h, 2w, C/4])` when use_high_res_features, extra_tokens `[B, K, C]` with
        extra_token_mask `[B, K]` bool (False tokens are ignored). `train` disables the stability fallback, as
        torch's training mode does.

        Returns masks `[B, M, 4h, 4w]`, iou_pred `[B, M]`, sam_tokens_out `[B, M', C]` (the mask tokens for the
        object pointer) and object_score_logits `[B, 1]`; M = 3 with multimask_output, else 1.
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            repeat_image,
            high_res_features,
            extra_tokens,
            extra_token_mask,
        )
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not train:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]

        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def predict_masks(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        repeat_image: bool,
        high_res_features: Sequence[jax.Array] | None = None,
        extra_tokens: jax.Array | None = None,
        extra_token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """All `num_mask_tokens` masks `[B, 4, 4h, 4w]` and IoUs `[B, 4]`, the mask tokens `[B, 4, C]` and the
        object score logits `[B, 1]`, before any multimask selection. Arguments as in `__call__`."""
        self._check_inputs(image_embeddings, image_pe, sparse_prompt_embeddings, repeat_image, high_res_features)
        if self.is_initializing() and self.use_high_res_features:
            # conv_s0/conv_s1 run in the image path, not here; create their parameters at init all the same.
            zeros = jnp.zeros((1, 1, 1, self.transformer_dim))
            self.project_high_res_features(zeros, zeros)

        batch_size = sparse_prompt_embeddings.shape[0]
        output_tokens = [self.iou_token.embedding, self.mask_tokens.embedding]
        if self.pred_obj_scores:
            output_tokens.insert(0, self.obj_score_token.embedding)
        output_tokens = jnp.concatenate(output_tokens, axis=0)
        num_output_tokens = output_tokens.shape[0]
        tokens = [jnp.broadcast_to(output_tokens, (batch_size, *output_tokens.shape))]
        if extra_tokens is not None:
            tokens.append(extra_tokens)
        # the prompt embeddings and positional encoding (computed in float32) in the compute dtype of the image
        # embeddings: bfloat16 in the bfloat16 mode, as torch autocast runs the decoder's layers in bfloat16
        dtype = image_embeddings.dtype
        tokens = jnp.concatenate([*tokens, sparse_prompt_embeddings], axis=1).astype(dtype)
        token_mask = self._token_mask(tokens, num_output_tokens, extra_tokens, extra_token_mask)
        image_pe = image_pe.astype(dtype)

        src = jnp.repeat(image_embeddings, batch_size, axis=0) if repeat_image else image_embeddings
        src = src + dense_prompt_embeddings.astype(dtype)
        hs, image_tokens = self.transformer(src, image_pe, tokens, token_mask=token_mask)
        first_mask_token = 1 if self.pred_obj_scores else 0  # the iou token precedes the mask tokens
        iou_token_out = hs[:, first_mask_token]
        mask_tokens_out = hs[:, first_mask_token + 1 : first_mask_token + 1 + self.num_mask_tokens]

        upscaled = self._upscale(image_tokens.reshape(src.shape), high_res_features)
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1
        )
        masks = jnp.einsum("bmc,bhwc->bmhw", hyper_in, upscaled)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:  # sam2: "assume the object is always present"
            object_score_logits = jnp.full((batch_size, 1), 10.0, iou_pred.dtype)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _upscale(self, src: jax.Array, high_res_features: Sequence[jax.Array] | None) -> jax.Array:
        """`[B, h, w, C]` -> `[B, 4h, 4w, C/8]`, adding the projected high-res features when configured."""
        x = self.output_upscaling_0(src)
        if self.use_high_res_features:
            x = x + high_res_features[1]
        x = self.output_upscaling_3(gelu(self.output_upscaling_1(x)))
        if self.use_high_res_features:
            x = x + high_res_features[0]
        return gelu(x)

    @staticmethod
    def _token_mask(
        tokens: jax.Array, num_output_tokens: int, extra_tokens: jax.Array | None, extra_token_mask: jax.Array | None
    ) -> jax.Array | None:
        """`[B, N]` key-padding mask over all tokens: only extra tokens can be masked out."""
        if extra_token_mask is None:
            return None
        if extra_tokens is None or extra_token_mask.shape != extra_tokens.shape[:2]:
            raise ValueError(
                f"extra_token_mask must be [B, K] for extra_tokens [B, K, C], got {extra_token_mask.shape} "
                f"for {None if extra_tokens is None else extra_tokens.shape}"
            )
        batch_size, num_tokens = tokens.shape[:2]
        num_prompt_tokens = num_tokens - num_output_tokens - extra_tokens.shape[1]
        keep = lambda n: jnp.ones((batch_size, n), bool)
        return jnp.concatenate([keep(num_output_tokens), extra_token_mask, keep(num_prompt_tokens)], axis=1)

    def _check_inputs(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        repeat_image: bool,
        high_res_features: Sequence[jax.Array] | None,
    ) -> None:
        if image_pe.shape[0] != 1:
            raise ValueError(f"image_pe must have batch size 1 (from get_dense_pe()), got shape {image_pe.shape}")
        batch_size = sparse_prompt_embeddings.shape[0]
        if not repeat_image and image_embeddings.shape[0] != batch_size:
            raise ValueError(
                f"image_embeddings batch {image_embeddings.shape[0]} != prompt batch {batch_size} "
                "(pass repeat_image=True to share one image between prompts)"
            )
        if self.use_high_res_features != (high_res_features is not None):
            raise ValueError(
                f"high_res_features must be given if and only if use_high_res_features "
                f"(={self.use_high_res_features})"
            )

    def _dynamic_multimask_via_stability(self, all_mask_logits: jax.Array, all_iou_scores: jax.Array):
        """Keeps the single mask (token 0) where it is stable, else takes the multimask output (tokens 1..3)
        with the highest predicted IoU; `[B, 4, H, W]`, `[B, 4]` -> `[B, 1, H, W]`, `[B, 1]`."""
        multimask_logits, multimask_iou = all_mask_logits[:, 1:], all_iou_scores[:, 1:]
        best = jnp.argmax(multimask_iou, axis=-1)[:, None]
        best_logits = jnp.take_along_axis(multimask_logits, best[:, :, None, None], axis=1)
        best_iou = jnp.take_along_axis(multimask_iou, best, axis=1)

        single_logits, single_iou = all_mask_logits[:, 0:1], all_iou_scores[:, 0:1]
        is_stable = self._stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh  # [B, 1]
        mask_logits = jnp.where(is_stable[:, :, None, None], single_logits, best_logits)
        iou_scores = jnp.where(is_stable, single_iou, best_iou)
        return mask_logits, iou_scores

    def _stability_scores(self, mask_logits: jax.Array) -> jax.Array:
        """IoU between the masks thresholded at +delta and at -delta: `[B, M, H, W]` -> `[B, M]`."""
        delta = self.dynamic_multimask_stability_delta
        area_i = jnp.sum(mask_logits > delta, axis=(-2, -1)).astype(jnp.float32)
        area_u = jnp.sum(mask_logits > -delta, axis=(-2, -1)).astype(jnp.float32)
        # an empty union counts as stable; max() only keeps the unselected branch finite
        return jnp.where(area_u > 0, area_i / jnp.maximum(area_u, 1.0), 1.0)


class UnknownCategoryError(UserError, ValueError):
    """A robot category other than arm, gripper and robot."""


def robot_category_index(name: str) -> int:
    """The class-token row of a category string; anything but arm, gripper, robot is an error (an
    UnknownCategoryError, a ValueError), as in the original."""
    if name not in ROBOT_CATEGORIES:
        raise UnknownCategoryError(f"unknown robot category {name!r}; expected one of {ROBOT_CATEGORIES}")
    return ROBOT_CATEGORIES.index(name)


class RobotMaskDecoder(MaskDecoder):
    """RobotSeg's MaskDecoder_Robot_RPG: SAM 2.1's decoder plus `robot_token_embedding`, a table of
    one class token per robot category.

    With a category the token sequence is `[obj_score, iou, 4 mask tokens, class token, RPG object tokens,
    sparse prompts]`; without one it is SAM 2.1's. Absence is per sample (category -1) and implemented by masking
    the class and object tokens out, so that one compiled step serves both (it equals leaving them out).
    """

    num_robot_categories: int = len(ROBOT_CATEGORIES)

    def setup(self) -> None:
        super().setup()
        # PyTorch's nn.Embedding initialises N(0, 1).
        self.robot_token_embedding = nn.Embed(
            self.num_robot_categories, self.transformer_dim, embedding_init=nn.initializers.normal(1.0)
        )

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: Sequence[jax.Array] | None = None,
        robot_category: jax.Array | None = None,
        object_tokens: jax.Array | None = None,
        object_token_mask: jax.Array | None = None,
        train: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Arguments and outputs as MaskDecoder's, plus `robot_category` `[B]` int (a `robot_category_index`, or
        -1 for none; None: no sample has one), the RPG `object_tokens` `[B, T, C]` and their validity
        `object_token_mask` `[B, T]` bool (None: all valid). The class and object tokens' outputs are dropped;
        they act on the masks through attention only."""
        if self.is_initializing():
            self.robot_token_embedding(jnp.zeros((1,), jnp.int32))  # create the table even if unused here
        extra_tokens = extra_token_mask = None
        if robot_category is not None:
            if object_tokens is None:
                raise ValueError("robot_category needs the RPG object_tokens")
            present = robot_category >= 0
            class_token = self.robot_token_embedding(jnp.maximum(robot_category, 0))[:, None]
            extra_tokens = jnp.concatenate([class_token, object_tokens.astype(class_token.dtype)], axis=1)
            if object_token_mask is None:
                object_token_mask = jnp.ones(object_tokens.shape[:2], bool)
            extra_token_mask = jnp.concatenate([present[:, None], object_token_mask & present[:, None]], axis=1)
        return super().__call__(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            multimask_output,
            repeat_image,
            high_res_features,
            extra_tokens,
            extra_token_mask,
            train,
        )
