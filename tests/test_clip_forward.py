"""The stage grouping of the training clip's scan."""

import numpy as np

from robotseg_jax.training.clip_forward import stage_groups
from robotseg_jax.training.prompts import ROBOTSEG, draw_prompts


def test_plain_tracked_stages_share_one_scan():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        plan, _ = draw_prompts(rng, ROBOTSEG, 7)
        groups = stage_groups(plan)
        assert [t for _, run in groups for t in run] == list(plan.processing_order)
        # RobotSeg: stage 0 alone (prompted, conditioning), then stages 1..6 as one run.
        assert [run for _, run in groups] == [(0,), (1, 2, 3, 4, 5, 6)]
        seen.add(plan.mode)
    assert seen == {"robot", "mask", "point"}
