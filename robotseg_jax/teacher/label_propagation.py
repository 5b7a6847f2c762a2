"""DINOv3 label propagation, the compiled math: soft label maps carried from a category's first labelled frame
to the frames after it by feature similarity, as the original RobotSeg's `generate_pseudo_masks.py` does.

Per frame after the first: the context is the first frame plus the last <= 7 predicted frames; patch (i, j) of the
current frame scores every context patch (u, v) by the dot product of unit-norm DINOv3 features, restricted to the
disc |(i, j) - (u, v)| <= 12 patches; only scores >= the row's 5th largest survive; softmax(score / 0.2) weights
the context's soft label maps; the result, renormalised, joins the FIFO (capacity 7: the oldest prediction leaves,
the first frame stays). Its mask: nearest upsampling to the mask resolution, per-channel min-max over the image,
argmax.

Static shapes: the context is a fixed-capacity ring buffer with validity flags (an invalid frame's scores are
-inf), so one compiled step serves the first frames, when the context is still filling up, as well as later ones.
`propagate_chunk` advances all categories over a chunk of frames (a `lax.scan` over the frames); a category's step
at each frame is SKIP (before its first label, or padding), START (its first labelled frame) or PROPAGATE. One
compilation per frame resolution and chunk size, whatever the video length.

M (label channels) is always 2. The original uses M = max label + 1, which is 1 for an empty first mask; M = 2
gives the same all-zero output there (a constant background channel and an all-zero foreground channel both
min-max to 0, and the argmax tie goes to channel 0).

Reading and writing the VRS folders, and the CLI, are in `teacher.propagate`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

CONTEXT_FRAMES = 7  # predicted frames kept (FIFO); the first frame is kept besides them
TOP_K = 5
TEMPERATURE = 0.2
RADIUS = 12  # patch units, Euclidean, inclusive
NUM_LABELS = 2  # background, foreground
SKIP, START, PROPAGATE = 0, 1, 2  # a category's step at one frame


# ---------------------------------------------------------------------------------------------------------------
# On unit-norm features [h*w, C] and soft label maps [h*w, M].


class Context(NamedTuple):
    """One category's context: the first frame, always kept, and a FIFO of the last CONTEXT_FRAMES predicted
    frames as a ring buffer (once full, `next_slot` is the oldest entry, so writing there pops it)."""

    first_feats: jax.Array  # [hw, C]
    first_probs: jax.Array  # [hw, M]
    feats: jax.Array  # [CONTEXT_FRAMES, hw, C]
    probs: jax.Array  # [CONTEXT_FRAMES, hw, M]
    valid: jax.Array  # [CONTEXT_FRAMES] bool
    next_slot: jax.Array  # [] int32


def empty_context(num_patches: int, channels: int, num_labels: int = NUM_LABELS) -> Context:
    return Context(
        first_feats=jnp.zeros((num_patches, channels), jnp.float32),
        first_probs=jnp.zeros((num_patches, num_labels), jnp.float32),
        feats=jnp.zeros((CONTEXT_FRAMES, num_patches, channels), jnp.float32),
        probs=jnp.zeros((CONTEXT_FRAMES, num_patches, num_labels), jnp.float32),
        valid=jnp.zeros((CONTEXT_FRAMES,), bool),
        next_slot=jnp.zeros((), jnp.int32),
    )


def neighbourhood(h: int, w: int, radius: int = RADIUS) -> jax.Array:
    """allowed[(i, j), (u, v)] = (i-u)^2 + (j-v)^2 <= radius^2, as bool [h*w, h*w] (integer, so exact)."""
    rows, cols = jnp.divmod(jnp.arange(h * w), w)
    return (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2 <= radius**2


def propagate_frame(feats: jax.Array, context: Context, allowed: jax.Array) -> jax.Array:
    """Soft label map [hw, M] of the frame with features `feats` [hw, C] from its context (the module docstring's
    rule)."""
    ctx_feats = jnp.concatenate([context.first_feats[None], context.feats])  # [1+Q, hw, C]
    ctx_probs = jnp.concatenate([context.first_probs[None], context.probs])
    ctx_valid = jnp.concatenate([jnp.ones((1,), bool), context.valid])
    scores = jnp.einsum("ic,tjc->itj", feats, ctx_feats)
    scores = jnp.where(allowed[:, None, :] & ctx_valid[None, :, None], scores, -jnp.inf)
    scores = scores.reshape(feats.shape[0], -1)  # row i: all context frames' patches, frame-major
    # Ties with the 5th largest are kept, so a row can keep more than 5 entries, as in the original.
    # The barrier on top_k's output keeps XLA:CPU from fusing the top_k into the elementwise ops that read it,
    # which recomputes it per element (50x slower); it changes no value.
    top_values, _ = jax.lax.optimization_barrier(jax.lax.top_k(scores, TOP_K))
    threshold = top_values[:, -1:]
    weights = jax.nn.softmax(jnp.where(scores >= threshold, scores, -jnp.inf) / TEMPERATURE, axis=-1)
    probs = weights @ ctx_probs.reshape(-1, ctx_probs.shape[-1])
    return probs / probs.sum(axis=-1, keepdims=True)


def _step(context: Context, feats: jax.Array, kind: jax.Array, first_probs: jax.Array, allowed: jax.Array):
    """One frame of one category: START resets the context to this frame and its label, PROPAGATE predicts and
    pushes the prediction into the FIFO, SKIP leaves the context as it is. Returns (context, soft labels)."""
    probs = propagate_frame(feats, context, allowed)
    slot = context.next_slot
    pushed = context._replace(
        feats=context.feats.at[slot].set(feats),
        probs=context.probs.at[slot].set(probs),
        valid=context.valid.at[slot].set(True),
        next_slot=(slot + 1) % CONTEXT_FRAMES,
    )
    started = empty_context(*feats.shape, first_probs.shape[-1])._replace(first_feats=feats, first_probs=first_probs)
    new = jax.tree.map(
        lambda s, p, c: jnp.where(kind == START, s, jnp.where(kind == PROPAGATE, p, c)), started, pushed, context
    )
    return new, probs


def legacy_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of PyTorch's legacy `mode="nearest"`, which the original uses for both resizes:
    min(floor(dst * scale), in - 1) with scale = in / out, computed in float32 as ATen's kernel does. This is not
    always the exact floor(dst * in / out): float32 can land just below an exact integer product, and then the
    original takes the lower index too."""
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64), in_size - 1)


def first_frame_probs(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One-hot [background, foreground] of a bool mask [H, W], legacy-nearest resized to `size` -> [h, w, 2]."""
    rows = legacy_nearest_indices(mask.shape[0], size[0])
    cols = legacy_nearest_indices(mask.shape[1], size[1])
    foreground = mask[rows][:, cols]
    return np.stack([~foreground, foreground], axis=-1).astype(np.float32)


def probs_to_masks(probs: jax.Array, mask_size: tuple[int, int]) -> jax.Array:
    """[..., h, w, M] soft labels -> bool [..., H, W] foreground: legacy-nearest upsampling to `mask_size`,
    per-channel min-max over the image (0 where max = min, the original's NaN -> 0), argmax (ties -> channel 0)."""
    rows = legacy_nearest_indices(probs.shape[-3], mask_size[0])
    cols = legacy_nearest_indices(probs.shape[-2], mask_size[1])
    up = jnp.take(jnp.take(probs, rows, axis=-3), cols, axis=-2)
    low = up.min(axis=(-3, -2), keepdims=True)
    high = up.max(axis=(-3, -2), keepdims=True)
    normalised = jnp.where(high > low, (up - low) / (high - low), 0.0)
    return jnp.argmax(normalised, axis=-1) == 1


@functools.partial(jax.jit, static_argnames=("mask_size",))
def propagate_chunk(
    contexts: Context, feats: jax.Array, kinds: jax.Array, first_probs: jax.Array, mask_size: tuple[int, int]
) -> tuple[Context, jax.Array, jax.Array]:
    """Advances K categories' contexts over a chunk of B frames.

    contexts: Context with a leading K axis; feats [B, h, w, C] unit-norm; kinds [K, B] of SKIP/START/PROPAGATE;
    first_probs [K, h, w, M] (used at START). Returns the new contexts, the soft label maps [K, B, h, w, M] and
    the masks [K, B, H, W] at `mask_size` (meaningful where the kind is PROPAGATE).
    """
    batch, h, w, channels = feats.shape
    flat_feats = feats.reshape(batch, h * w, channels)
    allowed = neighbourhood(h, w)

    def one_category(context, category_kinds, category_first_probs):
        first = category_first_probs.reshape(h * w, -1)
        step = lambda ctx, xs: _step(ctx, xs[0], xs[1], first, allowed)
        return jax.lax.scan(step, context, (flat_feats, category_kinds))

    # Categories one after another (lax.map, not vmap): the score matrix [hw, 8 * hw] is the peak memory, and
    # batching it over categories would triple that peak for no saving in compute.
    contexts, probs = jax.lax.map(lambda args: one_category(*args), (contexts, kinds, first_probs))
    probs = probs.reshape(*probs.shape[:2], h, w, -1)
    return contexts, probs, probs_to_masks(probs, mask_size)


def frame_kind(frame_id: int, start: int) -> int:
    """The step of a category whose first label is at frame `start` on frame `frame_id`: START there, PROPAGATE
    after it, SKIP before it (which includes padding frames, whose ids are negative)."""
    return START if frame_id == start else PROPAGATE if frame_id > start else SKIP
