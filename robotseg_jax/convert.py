"""Checkpoint conversion CLI.

    python -m robotseg_jax.convert --from-torch sam2.1_hiera_tiny.pt --model sam2.1_hiera_t --out DIR
    python -m robotseg_jax.convert --to-torch --model sam2.1_hiera_t --from DIR --out back.pt
"""

from __future__ import annotations

import argparse
import sys

from robotseg_jax.checkpoints import convert
from robotseg_jax.checkpoints.torch_keys import count_params, flax_to_torch
from robotseg_jax.modeling.config import MODEL_CONFIGS, get_model_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-torch", metavar="PT", help="PyTorch checkpoint ({'model': state_dict}) to read")
    direction.add_argument("--to-torch", action="store_true", help="write a PyTorch checkpoint from --from DIR")
    parser.add_argument("--model", required=True, choices=sorted(MODEL_CONFIGS), help="model name")
    parser.add_argument("--from", dest="source", metavar="DIR", help="orbax checkpoint directory (with --to-torch)")
    parser.add_argument("--out", required=True, help="output orbax directory (--from-torch) or .pt file (--to-torch)")
    args = parser.parse_args(argv)
    config = get_model_config(args.model)

    if args.from_torch:
        params = convert.torch_to_params(convert.load_torch_state_dict(args.from_torch), config)
        convert.save_params(args.out, params, config.name)
        print(f"{args.from_torch} -> {args.out}: {config.name}, {count_params(params):,} parameters")
    else:
        if not args.source:
            parser.error("--to-torch needs --from DIR")
        params, _ = convert.load_params(args.source, config)
        convert.save_torch_state_dict(flax_to_torch(params), args.out)
        print(f"{args.source} -> {args.out}: {config.name}, {count_params(params):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
