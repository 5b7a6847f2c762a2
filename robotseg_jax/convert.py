"""Checkpoint conversion CLI.

    python -m robotseg_jax.convert --from-torch sam2.1_hiera_tiny.pt --model sam2.1_hiera_t --out DIR
    python -m robotseg_jax.convert --to-torch --model sam2.1_hiera_t --from DIR --out back.pt

RobotSeg (`--model robotseg_hiera_t`) converts the same way from its release `robotseg.pt`. To start RobotSeg
from a SAM 2.1 checkpoint, as its training does, add `--init-from-sam2`: the SAM 2.1 weights are loaded and only
RobotSeg's new parameters are initialised (PyTorch's defaults, from `--seed`). Without the flag a checkpoint
that lacks keys is an error, so nothing is ever filled in by accident.

    python -m robotseg_jax.convert --from-torch sam2.1_hiera_tiny.pt --model robotseg_hiera_t --init-from-sam2 --out DIR

A checkpoint that cannot be converted (no file, not a checkpoint, another model) ends the command with a message
that names the file and the problem (exit status 2; `ROBOTSEG_TRACEBACK=1` shows the traceback).
"""

from __future__ import annotations

import argparse

import jax

from robotseg_jax import cli
from robotseg_jax.checkpoints import convert
from robotseg_jax.checkpoints.torch_keys import BUFFER_KEYS, count_params, flax_to_torch
from robotseg_jax.modeling.config import MODEL_CONFIGS, RobotSegConfig, get_model_config


PROG = "python -m robotseg_jax.convert"


def main(argv: list[str] | None = None) -> int:
    """Converts as the arguments ask. Raises CheckpointError (a robotseg_jax.errors.UserError) when the input
    checkpoint cannot be converted; the command line reports it."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from-torch", metavar="PT", help="PyTorch checkpoint ({'model': state_dict}) to read")
    direction.add_argument("--to-torch", action="store_true", help="write a PyTorch checkpoint from --from DIR")
    parser.add_argument("--model", required=True, choices=sorted(MODEL_CONFIGS), help="model name")
    parser.add_argument("--from", dest="source", metavar="DIR", help="orbax checkpoint directory (with --to-torch)")
    parser.add_argument("--out", required=True, help="output orbax directory (--from-torch) or .pt file (--to-torch)")
    parser.add_argument(
        "--init-from-sam2",
        action="store_true",
        help="with --from-torch and a RobotSeg model: read a SAM 2.1 checkpoint, initialise the new parameters",
    )
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed of --init-from-sam2's fresh parameters")
    args = parser.parse_args(argv)
    config = get_model_config(args.model)
    if args.init_from_sam2 and not (args.from_torch and isinstance(config, RobotSegConfig)):
        parser.error("--init-from-sam2 goes with --from-torch and a RobotSeg --model")

    if args.from_torch:
        state_dict = convert.load_torch_state_dict(args.from_torch)
        if args.init_from_sam2:
            params = convert.init_from_sam2(state_dict, config, jax.random.key(args.seed), source=args.from_torch)
        else:
            params = convert.torch_to_params(state_dict, config, source=args.from_torch)
        convert.save_params(args.out, params, config.name)
        total, note = count_params(params), ""
        if args.init_from_sam2:
            loaded = sum(v.size for k, v in state_dict.items() if k not in BUFFER_KEYS)
            note = f" ({total - loaded:,} initialised fresh)"
        print(f"{args.from_torch} -> {args.out}: {config.name}, {total:,} parameters{note}")
    else:
        if not args.source:
            parser.error("--to-torch needs --from DIR")
        params, _ = convert.load_params(args.source, config)
        convert.save_torch_state_dict(flax_to_torch(params), args.out)
        print(f"{args.source} -> {args.out}: {config.name}, {count_params(params):,} parameters")
    return 0


if __name__ == "__main__":
    cli.run(main)
