"""python -m robotseg_jax.data.sim --out DIR --videos N --frames T --size S --seed K [--workers W] ..."""

from __future__ import annotations

import argparse
import os
import time

from robotseg_jax import cli
from robotseg_jax.data.sim.dataset import (
    DEFAULT_SPLIT_FRACTIONS,
    EMBODIMENT_ORDER,
    GenerationConfig,
    generate,
)


def parse_split_fractions(text: str) -> dict[str, float]:
    """Parses "train=0.8,val=0.1,test=0.1" into {"train": 0.8, "val": 0.1, "test": 0.1}."""
    try:
        return {name.strip(): float(value) for name, value in (item.split("=") for item in text.split(","))}
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected name=fraction,... got {text!r}") from e


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    """Renders the dataset; a user error (settings that cannot be rendered or differ from the folder's, an output
    folder that cannot be created) raises a robotseg_jax.errors.UserError."""
    parser = argparse.ArgumentParser(prog="python -m robotseg_jax.data.sim", description=__doc__)
    parser.add_argument("--out", required=True, help="dataset root; rerunning with the same settings resumes")
    parser.add_argument("--videos", type=positive_int, required=True, help="number of videos (embodiments round robin)")
    parser.add_argument("--frames", type=positive_int, default=8, help="frames per video")
    parser.add_argument("--size", type=int, default=256, help="square frame size in pixels (at least 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1, help="rendering processes")
    parser.add_argument(
        "--holdout-embodiment",
        default="xarm6",
        choices=[*EMBODIMENT_ORDER, "none"],
        help="embodiment kept out of train and val (all its videos go to test); 'none' to split all alike",
    )
    parser.add_argument(
        "--splits",
        type=parse_split_fractions,
        default=dict(DEFAULT_SPLIT_FRACTIONS),
        help="fractions of the other embodiments' videos per split, e.g. train=0.8,val=0.1,test=0.1",
    )
    parser.add_argument("--jpeg-quality", type=int, default=95)
    args = parser.parse_args(argv)

    config = GenerationConfig(
        num_frames=args.frames,
        size=args.size,
        seed=args.seed,
        split_fractions=args.splits,
        holdout_embodiment=None if args.holdout_embodiment == "none" else args.holdout_embodiment,
        jpeg_quality=args.jpeg_quality,
    )
    start = time.perf_counter()
    rendered = generate(args.out, args.videos, config, workers=args.workers)
    seconds = time.perf_counter() - start
    print(f"rendered {len(rendered)} videos into {args.out} in {seconds:.1f}s")


if __name__ == "__main__":
    cli.run(main)
