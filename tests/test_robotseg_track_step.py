"""RobotSeg's tracking step on a frame tracked from memory (SEMA and RPG), jitted at the real model's input size
1024 and at a reduced one: one compiled program for frames with different inputs, and the shapes of the original (structure maps [B, 4, H, W]).

Initialising at 1024 on the CPU is slow, so the params are made at 128 px; they do not depend on the image size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robotseg_jax.checkpoints import convert
from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.robotseg import RobotSegModel
from robotseg_jax.modeling.memory_bank import MemoryEntry, one_frame_memory
from robotseg_jax.modeling.rpg import foreground_on_memory_grid
from robotseg_jax.modeling.sam2 import Prompts, RobotInputs
from tests.reference import build_reference

pytestmark = pytest.mark.reference

PARAMS_SIZE = 128


@pytest.fixture(scope="module")
def params() -> dict:
    config = get_model_config("robotseg_hiera_t", image_size=PARAMS_SIZE)
    reference = build_reference("sam2.1_hiera_t", PARAMS_SIZE, seed=3)
    return convert.init_from_sam2({k: v.numpy() for k, v in reference.state_dict().items()}, config, jax.random.key(0))


@pytest.mark.parametrize("overrides", [{"image_size": 128}, {}], ids=["128px", "1024px"])
def test_tracking_from_memory_compiles_once(params, overrides):
    config = get_model_config("robotseg_hiera_t", **overrides)
    size = config.image_size
    assert size == overrides.get("image_size", 1024)  # {} is the real robotseg_hiera_t config
    # Hiera interpolates its position embeddings: the 128 px params are this size's, leaf for leaf.
    shape = lambda leaf: (leaf.shape, leaf.dtype)
    assert jax.tree.map(shape, convert.params_template(config)) == jax.tree.map(shape, params)

    model = RobotSegModel(config)
    variables = {"params": params}

    @jax.jit
    def prepare(variables, image: jax.Array):
        """The frame's features and a memory of it prompted with a click, as `RobotSegModel.__call__` builds them."""
        features = model.apply(variables, image, method="forward_image")
        click = Prompts(jnp.asarray([[[0.3 * size, 0.6 * size]]]), jnp.ones((1, 1), jnp.int32))
        category = jnp.zeros((1,), jnp.int32)
        first = model.apply(
            variables, features, None, click, RobotInputs(image, category), is_init_cond_frame=True,
            method="track_step",
        )
        foreground = foreground_on_memory_grid(first.pred_masks[:, 0], features.vision_feats.shape[1:3])
        return features, one_frame_memory(MemoryEntry(first.maskmem_features, first.obj_ptr, foreground))

    traces = []

    @jax.jit
    def track(variables, features, memory, image, category, rng):
        traces.append(image.shape)
        robot = RobotInputs(image, category, rng)
        return model.apply(variables, features, memory, Prompts(), robot, method="track_step")

    outputs = []
    for seed, category in [(1, 2), (2, 0)]:  # other frames, memories, categories and FPS starts
        image = jax.random.normal(jax.random.key(seed), (1, size, size, 3))
        features, memory = prepare(variables, image)
        outputs.append(track(variables, features, memory, image, jnp.asarray([category]), jax.random.key(seed)))
    assert len(traces) == 1 and track._cache_size() == 1

    for out in outputs:
        assert out.structure_maps.shape == (1, config.num_mem_attn_layers, size, size)  # [B, 4, H, W]
        assert out.pred_masks.shape == (1, 1, size // 4, size // 4)
        assert out.pred_masks_high_res.shape == (1, 1, size, size)
        assert out.obj_ptr.shape == (1, config.d_model)
        assert out.maskmem_features.shape == (1, size // 16, size // 16, config.mem_dim)
        assert all(np.isfinite(np.asarray(x)).all() for x in (out.structure_maps, out.pred_masks, out.obj_ptr))
        # SEMA's structure logits, one map per layer (not the no-memory placeholder, one map repeated)
        assert np.abs(out.structure_maps[:, 0] - out.structure_maps[:, -1]).max() > 0
    assert np.abs(outputs[0].pred_masks - outputs[1].pred_masks).max() > 1e-3
