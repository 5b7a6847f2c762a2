"""The two homes of sam2's memory rules agree: training's traced `ClipMemory` equals the predictor's
`select_memory` (training mode) on every stage of random prompt plans."""

import jax.numpy as jnp
import numpy as np
import pytest

from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.memory_bank import ClipMemory, MemoryEntry, select_memory
from robotseg_jax.training.prompts import ROBOTSEG, SAM21_MOSE_FINETUNE, draw_prompts

CONFIG = get_model_config("sam2.1_hiera_t", image_size=64)


def _selection_of(memory: ClipMemory, t: int):
    inputs = memory.inputs_for(CONFIG, t)
    valid = np.asarray(inputs.maskmem_valid)
    spatial = {(int(f), int(i)) for f, i in zip(np.flatnonzero(valid), np.asarray(inputs.maskmem_tpos_index)[valid])}
    ptr_valid = np.asarray(inputs.obj_ptr_valid)
    pointers = {(int(f), float(d)) for f, d in zip(np.flatnonzero(ptr_valid), np.asarray(inputs.obj_ptr_tpos)[ptr_valid])}
    return spatial, pointers, float(inputs.tpos_scale)


@pytest.mark.parametrize("prompt_config", [ROBOTSEG, SAM21_MOSE_FINETUNE], ids=["robotseg", "sam21"])
@pytest.mark.parametrize("num_frames", [3, 8, 20])
def test_memory_of_every_stage_is_sams_training_selection(prompt_config, num_frames):
    rng = np.random.default_rng(num_frames)
    for _ in range(10):
        plan, _ = draw_prompts(rng, prompt_config, num_frames)
        entry = MemoryEntry(jnp.zeros((1, 4, 4, 64)), jnp.zeros((1, 256)))
        memory = ClipMemory.empty(entry, num_frames, jnp.float32)
        cond: list[int] = []
        stored: list[int] = []
        for t in plan.processing_order:
            if t not in plan.init_cond_frames:
                expected = select_memory(CONFIG, t, cond, [f for f in stored if f not in cond], num_frames, training=True)
                spatial, pointers, scale = _selection_of(memory, t)
                assert spatial == {(f, CONFIG.num_maskmem - p - 1) for f, p in expected.spatial}
                assert pointers == {(f, float(d)) for f, d in expected.pointers}
                assert scale == expected.tpos_scale
            is_cond = t in plan.cond_frames
            memory = memory.write(t, entry, is_cond)
            stored.append(t)
            cond += [t] if is_cond else []
