"""The two homes of sam2's memory rules agree: training's traced `ClipMemory` equals the predictor's
`select_memory` (training mode) on every stage of random prompt plans, and its compact inputs (a stage whose
memory is known while tracing) hold exactly the selected slots of the masked ones."""

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


@pytest.mark.parametrize("num_frames", [3, 8])
def test_compact_stage_memory_is_the_selected_slots(num_frames):
    rng = np.random.default_rng(num_frames)
    for _ in range(5):
        plan, _ = draw_prompts(rng, SAM21_MOSE_FINETUNE, num_frames)
        entry_of = lambda t: MemoryEntry(  # every frame's entry tells its frame
            jnp.full((1, 4, 4, 64), t, jnp.float32),
            jnp.full((1, 256), 10 + t, jnp.float32),
            jnp.full((1, 4, 4), bool(t % 2)),
        )
        memory = ClipMemory.empty(entry_of(0), num_frames, jnp.float32)
        stored, is_cond = np.zeros(num_frames, bool), np.zeros(num_frames, bool)
        for t in plan.processing_order:
            if t not in plan.init_cond_frames:
                full = memory.inputs_for(CONFIG, jnp.int32(t))
                compact = memory.inputs_for(CONFIG, t, (stored.copy(), is_cond.copy()))
                valid, ptr_valid = np.asarray(full.maskmem_valid), np.asarray(full.obj_ptr_valid)
                assert np.all(np.asarray(compact.maskmem_valid)) and np.all(np.asarray(compact.obj_ptr_valid))
                for name, mask in [("maskmem_features", valid), ("maskmem_tpos_index", valid),
                                   ("maskmem_foreground", valid), ("obj_ptrs", ptr_valid), ("obj_ptr_tpos", ptr_valid)]:
                    np.testing.assert_array_equal(getattr(compact, name), np.asarray(getattr(full, name))[mask], name)
                assert float(compact.tpos_scale) == float(full.tpos_scale)
            memory = memory.write(t, entry_of(t), t in plan.cond_frames)
            stored[t], is_cond[t] = True, t in plan.cond_frames
