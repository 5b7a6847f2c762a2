"""What the side-by-side benchmarks share: the machine line, timing by medians, Markdown tables, both libraries'
models on the same random weights, and the float32 / bfloat16 matmul roofline of this machine for each side."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """Date, CPU, visible cores, JAX backend and device (and torch, when installed): the header of every table."""
    try:
        import torch
    except ImportError:  # a JAX-only benchmark on a machine without the reference
        torch_part = ""
    else:
        torch_part = f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
    device = jax.devices()[0].device_kind
    return (
        f"{datetime.date.today().isoformat()}, {cpu_name()}, {len(os.sched_getaffinity(0))} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}: {device}){torch_part}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` (which must block until its result is ready) after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def ratio(torch_seconds: float, jax_seconds: float) -> str:
    """The speed-up of JAX over PyTorch (> 1: JAX is faster)."""
    return f"{torch_seconds / jax_seconds:.2f}x"


def matmul_gflops(dtype: str, size: tuple[int, int, int] = (4096, 1024, 1024), repeats: int = 5) -> tuple[float, float]:
    """(JAX, PyTorch) GFLOP/s of one [M, K] x [K, N] matmul in `dtype` on the CPU, measured now: the roofline
    each side's model numbers are read against. The JAX side is the project's own product (`common.matmul`, which
    accumulates bfloat16 in float32 as PyTorch's does)."""
    import torch

    from robotseg_jax.modeling.common import matmul as project_matmul

    m, k, n = size
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(m, k)).astype(np.float32), rng.normal(size=(k, n)).astype(np.float32)
    ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    matmul = jax.jit(project_matmul)
    t_jax = median_seconds(lambda: matmul(ja, jb).block_until_ready(), repeats)
    ta, tb = torch.from_numpy(a).to(getattr(torch, dtype)), torch.from_numpy(b).to(getattr(torch, dtype))
    t_torch = median_seconds(lambda: ta @ tb, repeats)
    flops = 2 * m * k * n / 1e9
    return flops / t_jax, flops / t_torch


def write_jpeg_video(folder: str, frames: int, height: int, width: int) -> None:
    """A synthetic video: a disc moving over a textured background, as JPEG frames `<t:05d>.jpg`."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width]
    background = np.stack([xx, yy, xx + yy], -1) * (200.0 / (height + width)) + rng.normal(0, 10, (height, width, 3))
    for t in range(frames):
        frame = background.copy()
        cx = width * (0.2 + 0.6 * (0.5 + 0.5 * np.sin(t / 20)))
        frame[(xx - cx) ** 2 + (yy - height / 2) ** 2 < (height / 6) ** 2] = [230, 210, 60]
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{t:05d}.jpg"))


def reference_video_predictor(model_name: str, image_size: int, seed: int = 0):
    """sam2's `SAM2VideoPredictor` (CPU, eval) with random perturbed weights and hole filling off (it needs sam2's
    CUDA extension): the PyTorch side of every comparison."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from robotseg_jax.modeling.config import REFERENCE_YAML
    from tests.reference import perturb_

    torch.set_grad_enabled(False)
    torch.manual_seed(seed)
    predictor = build_sam2_video_predictor(
        REFERENCE_YAML[model_name], ckpt_path=None, device="cpu",
        hydra_overrides_extra=[f"++model.image_size={image_size}"],
    )
    predictor.fill_hole_area = 0
    return perturb_(predictor, seed)


def converted_params(torch_model, config) -> dict:
    """The PyTorch model's weights through the project's converter."""
    from robotseg_jax.checkpoints import convert

    return convert.torch_to_params({k: v.numpy() for k, v in torch_model.state_dict().items()}, config)
