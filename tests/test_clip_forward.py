"""The stage grouping of the training clip's scan, and the unrolled stages' compact memory."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import quickstart
from robotseg_jax.checkpoints.convert import initial_params
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.robotseg import build_model
from robotseg_jax.training.clip_forward import stage_groups, track_clip
from robotseg_jax.training.prompts import ROBOTSEG, draw_prompts

TINY_MODEL = quickstart.get_config("tiny").model_overrides.to_dict()


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


def test_stages_run_on_their_own_equal_the_scan():
    """Unrolled, each stage attends to the frames it selects only; scanned, to every slot with the rest masked:
    the same outputs (the memory attention's dropout off, so that neither draws)."""
    config = get_model_config("robotseg_hiera_t", image_size=64, mem_attn_dropout=0.0, **TINY_MODEL)
    model = build_model(config)
    params = initial_params(config, None, seed=0)
    rng = np.random.default_rng(0)
    plan, from_gt = draw_prompts(rng, ROBOTSEG, 3)
    while plan.mode != "robot":  # RPG's object tokens from the memory's foreground on every tracked stage
        plan, from_gt = draw_prompts(rng, ROBOTSEG, 3)
    masks = np.zeros((1, 3, 64, 64), bool)
    for t in range(3):
        masks[:, t, 16 + 2 * t : 48, 20:44] = True
    images = jnp.asarray(rng.normal(size=(1, 3, 64, 64, 3)), jnp.float32)
    run = jax.jit(
        lambda params, unroll: track_clip(
            model, params, images, jnp.asarray(masks), jnp.asarray([2]), plan, jnp.asarray(from_gt),
            jax.random.key(0), unroll=unroll,
        ),
        static_argnums=1,
    )
    scanned, unrolled = run(params, False), run(params, True)
    for a, b in zip(jax.tree.leaves(scanned), jax.tree.leaves(unrolled)):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=1e-4, rtol=1e-4)
