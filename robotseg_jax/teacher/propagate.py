"""DINOv3 pseudo-label propagation (spec 4.5): for every category, from its first labelled frame in `mask_gt` to
the end of the video, masks written to `<split>/mask_gt_dinov3/<video>/<cat>/<frame:05d>.png`.

    python -m robotseg_jax.teacher.propagate --data DIR --checkpoint dinov3.pth [--model vith16plus]
        [--split train] [--overwrite] [--short-side 960] [--batch-size 4]

Per frame after the first (spec 4.5, "Propagation"): the context is the first frame plus the last <= 7 predicted
frames; patch (i, j) of the current frame scores every context patch (u, v) by the dot product of unit-norm
DINOv3 features, restricted to the disc |(i, j) - (u, v)| <= 12 patches; only scores >= the row's 5th largest
survive; softmax(score / 0.2) weights the context's soft label maps; the result, renormalised, joins the FIFO.
Its mask: nearest upsampling to the mask resolution, per-channel min-max over the image, argmax.

Static shapes: the context is a fixed-capacity ring buffer with validity flags (an invalid frame's scores are
-inf), so one compiled step serves the first frames, when the context is still filling up, as well as later ones.
A video is processed in chunks of `batch_size` frames (ViT batch, then a `lax.scan` over the chunk's frames, all
categories in one call); a category's chunk steps are SKIP (before its first label, or padding), START
(its first labelled frame) or PROPAGATE. One compilation per frame resolution, whatever the video length.

Choices where the spec is silent or is about the original's in-place layout:
- The output goes to `mask_gt_dinov3`; the first labelled frame's PNG there is a copy of the `mask_gt` label
  (training reads stage 0 from `mask_gt_dinov3`, spec 4.1). Labels in `mask_gt` after the first one are not used.
- Videos whose every category already has a PNG in `mask_gt_dinov3` for each frame from its first label on are
  skipped (the original re-processed only incomplete folders); `--overwrite` recomputes them. VRS-Sim's train
  split ships exact masks there as stand-ins, so replacing them needs `--overwrite`.
- A video without any label in `mask_gt` is an error (all of them are listed before any work starts); a category
  without a label in an otherwise labelled video is skipped.
- M (label channels) is always 2. The original uses M = max label + 1, which is 1 for an empty first mask; M = 2
  gives the same all-zero output there (a constant background channel and an all-zero foreground channel both
  min-max to 0, and the argmax tie goes to channel 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from robotseg_jax.checkpoints.torch_keys import CheckpointMismatchError
from robotseg_jax.data.vrs_layout import (
    CATEGORIES,
    VRSLayoutError,
    frame_path,
    list_frames,
    list_videos,
    mask_path,
    read_frame,
    read_mask,
)
from robotseg_jax.teacher.dinov3 import VARIANTS
from robotseg_jax.teacher.dinov3_checkpoint import (
    ArchitectureMismatchError,
    load_params,
)
from robotseg_jax.teacher.features import (
    SHORT_SIDE,
    FeatureFn,
    resize_frame,
    vit_feature_fn,
)

CONTEXT_FRAMES = 7  # predicted frames kept (FIFO); the first frame is kept besides them
TOP_K = 5
TEMPERATURE = 0.2
RADIUS = 12  # patch units, Euclidean, inclusive
NUM_LABELS = 2  # background, foreground
LABEL_DIR = "mask_gt"
OUTPUT_DIR = "mask_gt_dinov3"
SKIP, START, PROPAGATE = 0, 1, 2
PADDING_FRAME = -1  # frame id of the padding that fills a video's last chunk


class PropagationError(ValueError):
    """The data cannot be propagated as asked; the message names the videos or paths."""


# ---------------------------------------------------------------------------------------------------------------
# The math, on unit-norm features [h*w, C] and soft label maps [h*w, M].


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
    """Soft label map [hw, M] of the frame with features `feats` [hw, C] from its context (spec 4.5)."""
    ctx_feats = jnp.concatenate([context.first_feats[None], context.feats])  # [1+Q, hw, C]
    ctx_probs = jnp.concatenate([context.first_probs[None], context.probs])
    ctx_valid = jnp.concatenate([jnp.ones((1,), bool), context.valid])
    scores = jnp.einsum("ic,tjc->itj", feats, ctx_feats)
    scores = jnp.where(allowed[:, None, :] & ctx_valid[None, :, None], scores, -jnp.inf)
    scores = scores.reshape(feats.shape[0], -1)  # row i: all context frames' patches, frame-major
    # Ties with the 5th largest are kept, so a row can keep more than 5 entries (spec 4.5).
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
    """Source indices of PyTorch's legacy `mode="nearest"`: min(floor(dst * scale), in - 1) with scale = in / out,
    computed in float32 as ATen's kernel does (spec 4.5 writes it floor(dst * in / out); float32 can land just
    below an exact integer product, and then the original takes the lower index too)."""
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


# ---------------------------------------------------------------------------------------------------------------
# Videos in the VRS layout.


@dataclasses.dataclass(frozen=True)
class VideoPlan:
    """What to do for one video: the frames from the earliest first label on, and each category's first label."""

    video: str
    frame_ids: list[int]
    starts: dict[str, int]  # category -> frame id of its first label in mask_gt, for the categories to write


def first_labels(root: str, split: str, video: str, frame_ids: Sequence[int]) -> dict[str, int]:
    """Category -> the first frame id (of those with a JPEG) that has a mask PNG in `mask_gt`."""
    starts = {}
    for category in CATEGORIES:
        labelled = [i for i in frame_ids if os.path.exists(mask_path(root, split, video, category, i, LABEL_DIR))]
        if labelled:
            starts[category] = labelled[0]
    return starts


def plan_video(root: str, split: str, video: str, overwrite: bool) -> VideoPlan:
    """Raises PropagationError when the video has no label at all."""
    frame_ids = list_frames(root, split, video)
    starts = first_labels(root, split, video, frame_ids)
    if not starts:
        raise PropagationError(f"no first-frame label: no mask PNG under {os.path.join(root, split, LABEL_DIR, video)}")
    if not overwrite:
        starts = {c: s for c, s in starts.items() if not _written(root, split, video, c, frame_ids, s)}
    first = min(starts.values(), default=None)
    return VideoPlan(video, [i for i in frame_ids if first is not None and i >= first], starts)


def _written(root: str, split: str, video: str, category: str, frame_ids: Sequence[int], start: int) -> bool:
    return all(os.path.exists(mask_path(root, split, video, category, i, OUTPUT_DIR)) for i in frame_ids if i >= start)


def _frame_kind(frame_id: int, start: int) -> int:
    return START if frame_id == start else PROPAGATE if frame_id > start else SKIP


def _write_mask(path: str, mask: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)  # 2-D uint8: mode L


def propagate_video(
    root: str,
    split: str,
    plan: VideoPlan,
    feature_fn: FeatureFn,
    short_side: int = SHORT_SIDE,
    batch_size: int = 4,
    on_frames: Callable[[int], object] = lambda n: None,
) -> None:
    """Writes `mask_gt_dinov3` PNGs for `plan`: the first label's copy, then one propagated mask per frame.
    `feature_fn` gets each chunk of resized frames padded to `batch_size` (padding ids are PADDING_FRAME)."""
    categories = sorted(plan.starts)
    first_masks = {c: read_mask(root, split, plan.video, c, plan.starts[c], LABEL_DIR) for c in categories}
    mask_size = first_masks[categories[0]].shape
    contexts = first_probs = None
    for offset in range(0, len(plan.frame_ids), batch_size):
        frame_ids = plan.frame_ids[offset : offset + batch_size]
        frames = [read_frame(root, split, plan.video, i) for i in frame_ids]
        for i, frame in zip(frame_ids, frames):
            if frame.shape[:2] != mask_size:
                raise PropagationError(f"frame {frame_path(root, split, plan.video, i)} has size {frame.shape[:2]}, "
                                       f"the video's first label has {mask_size}")
        resized = np.stack([resize_frame(f, short_side) for f in frames])
        padding = batch_size - len(frame_ids)
        resized = np.concatenate([resized, np.zeros((padding, *resized.shape[1:]), np.uint8)])
        padded_ids = list(frame_ids) + [PADDING_FRAME] * padding
        feats = feature_fn(resized, padded_ids)
        if contexts is None:
            _, h, w, channels = feats.shape
            first_probs = jnp.stack([first_frame_probs(first_masks[c], (h, w)) for c in categories])
            contexts = jax.tree.map(lambda x: jnp.stack([x] * len(categories)), empty_context(h * w, channels))
        kinds = np.array([[_frame_kind(i, plan.starts[c]) for i in padded_ids] for c in categories], np.int32)
        contexts, _, masks = propagate_chunk(contexts, feats, kinds, first_probs, mask_size=tuple(mask_size))
        masks = np.asarray(masks)
        for k, category in enumerate(categories):
            for b, frame_id in enumerate(frame_ids):
                kind = kinds[k, b]
                if kind != SKIP:
                    mask = first_masks[category] if kind == START else masks[k, b]
                    _write_mask(mask_path(root, split, plan.video, category, frame_id, OUTPUT_DIR), mask)
        on_frames(len(frame_ids))


def propagate_split(
    root: str,
    split: str,
    feature_fn: FeatureFn,
    short_side: int = SHORT_SIDE,
    batch_size: int = 4,
    overwrite: bool = False,
    plans: Sequence[VideoPlan] | None = None,
    progress: bool = True,
) -> list[VideoPlan]:
    """Propagates every video of the split that needs it; returns the plans that were carried out."""
    plans = plan_split(root, split, overwrite) if plans is None else plans
    todo = [p for p in plans if p.starts]
    with tqdm(total=sum(len(p.frame_ids) for p in todo), unit="frame", desc="propagating", disable=not progress) as bar:
        for plan in todo:
            bar.set_postfix_str(plan.video)
            propagate_video(root, split, plan, feature_fn, short_side, batch_size, on_frames=bar.update)
    return todo


def plan_split(root: str, split: str, overwrite: bool) -> list[VideoPlan]:
    """Plans every video of the split; raises one PropagationError listing all videos without any label."""
    plans, unlabelled = [], []
    for video in list_videos(root, split):
        try:
            plans.append(plan_video(root, split, video, overwrite))
        except PropagationError as e:
            unlabelled.append(str(e))
    if unlabelled:
        raise PropagationError("\n  ".join([f"{len(unlabelled)} video(s) cannot be propagated:", *unlabelled]))
    return plans


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m robotseg_jax.teacher.propagate",
        description="DINOv3 pseudo-label propagation (spec 4.5): writes <data>/<split>/mask_gt_dinov3 from the "
        "first labelled frame of each category in mask_gt.",
    )
    parser.add_argument("--data", required=True, help="dataset root in the VRS layout")
    parser.add_argument("--checkpoint", required=True, help="DINOv3 weights: official .pth or HF .safetensors")
    parser.add_argument("--model", default="vith16plus", choices=sorted(VARIANTS), help="ViT of the checkpoint")
    parser.add_argument("--split", default="train")
    parser.add_argument("--overwrite", action="store_true", help="recompute videos whose pseudo masks all exist")
    parser.add_argument("--short-side", type=int, default=SHORT_SIDE, help="resize target of the short side")
    parser.add_argument("--batch-size", type=int, default=4, help="frames per ViT batch and propagation chunk")
    args = parser.parse_args(argv)

    expected = (FileNotFoundError, ImportError, ArchitectureMismatchError, CheckpointMismatchError,
                VRSLayoutError, PropagationError)
    try:
        if not os.path.isfile(args.checkpoint):  # before planning, which reads every mask folder
            raise FileNotFoundError(f"checkpoint not found: {args.checkpoint}")
        plans = plan_split(args.data, args.split, args.overwrite)
        # The original runs in float32 (spec 4.5); "highest" keeps TPUs and GPUs off bf16/TF32 matmuls.
        with jax.default_matmul_precision("highest"):
            feature_fn = vit_feature_fn(load_params(args.checkpoint, VARIANTS[args.model]), VARIANTS[args.model])
            done = propagate_split(args.data, args.split, feature_fn, args.short_side, args.batch_size, plans=plans)
    except expected as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    skipped = len(plans) - len(done)
    print(f"wrote {os.path.join(args.data, args.split, OUTPUT_DIR)}: {len(done)} video(s) propagated, "
          f"{sum(len(p.frame_ids) for p in done)} frames; {skipped} video(s) already complete")


if __name__ == "__main__":
    main()
