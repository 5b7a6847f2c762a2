"""Evaluate a checkpoint on VRS / VRS-Sim with the paper's protocol (settings AU, 1C, 3C, BB, OI; J, F, J&F).

    python -m robotseg_jax.evaluate --config configs/eval_vrs.py \\
        --config.checkpoint=robotseg.pt --config.data=/data/VRS [--config.settings=AU,1C,3C,BB] \\
        [--config.model=sam2.1_hiera_t] [--config.image_size=512] [--config.max_videos=10] [--config.out=eval_vrs]

Prints J&F per setting (rows, with one row per embodiment below each) and category (columns), and writes the
predicted masks to out/<setting>/<category>/<video>/<frame:05d>.png with results.csv and results.json in out/.
A config, checkpoint or data error ends the command with one message naming the field or file (exit status 2).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from robotseg_jax import cli
from robotseg_jax.evaluation.from_config import (
    load_predictor,
    plan_from_config,
    run_plan,
)
from robotseg_jax.evaluation.report import table

_CONFIG = config_flags.DEFINE_config_file("config", None, "an evaluation config, e.g. configs/eval_vrs.py")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _CONFIG.value is None:
        raise app.UsageError("--config is required, e.g. --config configs/eval_vrs.py")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and JAX log at INFO; keep the progress bar and table readable
    # User errors (ConfigError, DatasetError, VRSLayoutError, ...) name what to fix; cli.run reports them.
    plan = plan_from_config(_CONFIG.value)  # fails on the config or data before the model loads
    run = run_plan(plan, load_predictor(_CONFIG.value))
    print(table(run.results), end="")
    print("wrote " + ", ".join(run.paths[:2]))


if __name__ == "__main__":
    cli.run(main, absl_flags=True)
