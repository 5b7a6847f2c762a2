"""Device and host memory of the video predictor as a video grows: flat device memory, host memory growing
only by the per-frame outputs it stores (sam2's issue #62: 18.5 GiB for 1,581 frames on the GPU).

    python -m benchmarks.video_memory [--image-size 1024] [--frames 1000] [--report-at 10,100,1000]
                                      [--objects 1] [--video-size 480x640] [--checkpoint PATH]

A synthetic JPEG video (a moving disc on a textured background) is written to a temp dir and tracked from a
click on frame 0. Without --checkpoint the model has random weights, which is all a memory measurement needs.
Device memory is the backend's `bytes_in_use` where it reports one (GPU, TPU), else the bytes of live JAX arrays.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time

import jax
import jax.numpy as jnp

from benchmarks.common import write_jpeg_video
from robotseg_jax.inference import build_video_predictor
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.sam2 import SAM2Model


def device_bytes() -> tuple[int, str]:
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_in_use" in stats:
        return stats["bytes_in_use"], "bytes_in_use"
    return sum(x.nbytes for x in jax.live_arrays()), "live arrays"


def host_rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def stored_output_bytes(state) -> int:
    """Bytes of the per-frame outputs the session keeps on the host (low-res logits, pointers, memory)."""
    total = 0
    for obj in state.objects:
        for out in (*obj.cond_outputs.values(), *obj.non_cond_outputs.values()):
            total += out.pred_masks.nbytes + out.obj_ptr.nbytes + out.object_score_logits.nbytes
            total += 0 if out.maskmem_features is None else out.maskmem_features.nbytes
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.video_memory", description=__doc__)
    parser.add_argument("--model", default="sam2.1_hiera_t")
    parser.add_argument("--checkpoint", default=None, help="official .pt or orbax dir (default: random weights)")
    parser.add_argument("--image-size", type=int, default=1024, help="model input size (smaller for CPU runs)")
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--report-at", default="10,100,1000", help="frame counts to report at, comma separated")
    parser.add_argument("--objects", type=int, default=1)
    parser.add_argument("--video-size", default="480x640", help="HxW of the synthetic frames")
    args = parser.parse_args(argv)
    height, width = map(int, args.video_size.split("x"))
    report_at = {int(n) for n in args.report_at.split(",") if int(n) <= args.frames}

    if args.checkpoint:
        predictor = build_video_predictor(args.model, args.checkpoint, image_size=args.image_size)
    else:
        config = get_model_config(args.model, image_size=args.image_size)
        images = jnp.zeros((1, args.image_size, args.image_size, 3))
        params = jax.jit(SAM2Model(config).init)(jax.random.key(0), images)["params"]
        predictor = build_video_predictor(args.model, params=params, image_size=args.image_size)

    print(f"{args.model} at {args.image_size}, {args.objects} object(s), {args.frames} frames of {height}x{width}, "
          f"backend {jax.default_backend()}")
    print(f"{'frames':>7} {'device MiB':>11} {'host RSS MiB':>13} {'stored outputs MiB':>19} {'frames/s':>9}")
    with tempfile.TemporaryDirectory() as folder:
        write_jpeg_video(folder, args.frames, height, width)
        state = predictor.init_state(folder)
        for i in range(args.objects):
            point = [[width * (0.2 + 0.6 * i / max(1, args.objects)), height / 2]]
            predictor.add_new_points_or_box(state, 0, i, points=point, labels=[1])
        start, counted_from = time.perf_counter(), 0
        for count, _ in enumerate(predictor.propagate_in_video(state), start=1):
            if count == 2:  # the prompted frame and the first tracked frame carry the compilation
                start, counted_from = time.perf_counter(), 2
            if count in report_at:
                fps = (count - counted_from) / max(time.perf_counter() - start, 1e-9)
                used, kind = device_bytes()
                print(f"{count:>7} {used / 2**20:>11.1f} {host_rss_bytes() / 2**20:>13.1f} "
                      f"{stored_output_bytes(state) / 2**20:>19.1f} {fps:>9.2f}", flush=True)
    print(f"device memory: {kind}; sizes of compiled programs: {predictor.steps.cache_sizes()}")


if __name__ == "__main__":
    main()
