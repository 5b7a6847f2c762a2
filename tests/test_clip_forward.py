"""The training clip's memory bank against sam2's memory selection, and the stage grouping of the scan."""

import jax.numpy as jnp
import numpy as np
import pytest

from robotseg_jax.modeling.config import get_model_config
from robotseg_jax.modeling.memory_bank import select_memory
from robotseg_jax.training.clip_forward import ClipMemory, stage_groups
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
        memory = ClipMemory.empty(CONFIG, num_frames, 1, jnp.float32, with_foreground=False)
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
            memory = memory.write(t, jnp.zeros((1, 4, 4, 64)), jnp.zeros((1, 256)), None, is_cond)
            stored.append(t)
            cond += [t] if is_cond else []


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
