"""Throughput of DINOv3 pseudo-label propagation (RobotSeg's generate_pseudo_masks): frames/s of feature extraction (resize, ViT) plus
propagation of all three categories, with random weights on random frames.

    python -m benchmarks.dinov3_propagation [--model vits16] [--source 720x1280] [--short-side 960]
        [--frames 8] [--batch-size 4] [--categories 3]

A source frame of HxW is resized by the original's rule (short side to --short-side, both sides up to multiples of 16);
the ViT then sees (H'/16)x(W'/16) patches. The first chunk (compilation) is not timed.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from robotseg_jax.teacher import dinov3, label_propagation
from robotseg_jax.teacher.features import resize_frame, resized_size, vit_feature_fn


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dinov3_propagation", description=__doc__)
    parser.add_argument("--model", default="vits16", choices=sorted(dinov3.VARIANTS))
    parser.add_argument("--source", type=parse_size, default=(720, 1280), help="HxW of the video frames")
    parser.add_argument("--short-side", type=int, default=960)
    parser.add_argument("--frames", type=int, default=8, help="timed frames (after one warm-up chunk)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--categories", type=int, default=3)
    args = parser.parse_args(argv)

    config = dinov3.VARIANTS[args.model]
    extract = vit_feature_fn(dinov3.random_params(config), config)
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (args.batch_size, *args.source, 3), dtype=np.uint8)
    height, width = resized_size(*args.source, args.short_side)
    h, w = height // config.patch_size, width // config.patch_size
    first_mask = np.zeros(args.source, bool)
    first_mask[: args.source[0] // 2] = True
    first_probs = np.stack([label_propagation.first_frame_probs(first_mask, (h, w))] * args.categories)
    empty = label_propagation.empty_context(h * w, config.embed_dim)
    contexts = jax.tree.map(lambda x: np.stack([x] * args.categories), empty)
    kinds = np.full((args.categories, args.batch_size), label_propagation.PROPAGATE, np.int32)
    ids = list(range(args.batch_size))
    print(f"{args.model} on {jax.devices()[0].platform}: {args.source[0]}x{args.source[1]} frames -> {height}x{width} "
          f"({h}x{w} = {h * w} patches), batch {args.batch_size}, {args.categories} categories")

    timings = {"resize": 0.0, "vit": 0.0, "propagation": 0.0}
    chunks = -(-args.frames // args.batch_size)
    with jax.default_matmul_precision("highest"):
        for chunk in range(chunks + 1):  # chunk 0 compiles and is not timed
            start = time.perf_counter()
            resized = np.stack([resize_frame(frame, args.short_side) for frame in source])
            resized_at = time.perf_counter()
            feats = jax.block_until_ready(extract(resized, ids))
            vit_at = time.perf_counter()
            chunk_kinds = kinds.copy()
            if chunk == 0:
                chunk_kinds[:, 0] = label_propagation.START
            contexts, _, masks = label_propagation.propagate_chunk(
                contexts, feats, chunk_kinds, first_probs, mask_size=args.source
            )
            jax.block_until_ready(masks)
            if chunk:
                timings["resize"] += resized_at - start
                timings["vit"] += vit_at - resized_at
                timings["propagation"] += time.perf_counter() - vit_at

    frames = chunks * args.batch_size
    total = sum(timings.values())
    per_frame = ", ".join(f"{name} {1000 * t / frames:.0f} ms" for name, t in timings.items())
    print(f"{frames} frames: {frames / total:.3f} frames/s ({per_frame} per frame)")


if __name__ == "__main__":
    main()
