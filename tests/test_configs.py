"""The training configs build their prompt, loss and optimizer sections from the code's presets, and
`config_sections.dataclass_from_config` turns those sections (with command-line style overrides) back into the dataclasses."""

import dataclasses

import pytest

from configs import eval_vrs, quickstart, robotseg_hiera_t, sam2_1_hiera_t_finetune
from robotseg_jax.config_sections import dataclass_from_config
from robotseg_jax.training import prompts
from robotseg_jax.training.losses import LETLossConfig, SAM2LossConfig
from robotseg_jax.training.optimizer import OptimizerConfig


def _sections(config):
    return (
        dataclass_from_config(prompts.PromptConfig, config.prompts),
        dataclass_from_config(LETLossConfig, config.let_loss),
        dataclass_from_config(SAM2LossConfig, config.sam2_loss),
        dataclass_from_config(OptimizerConfig, config.optimizer, total_steps=10),
    )


def test_paper_config_is_the_presets():
    assert _sections(robotseg_hiera_t.get_config()) == (
        prompts.ROBOTSEG, LETLossConfig(), SAM2LossConfig(), OptimizerConfig(total_steps=10)
    )


def test_variants_change_only_what_they_set():
    prompt, let, sam2, optimizer = _sections(sam2_1_hiera_t_finetune.get_config())
    assert prompt == prompts.SAM21_MOSE_FINETUNE and let == LETLossConfig() and sam2 == SAM2LossConfig()
    assert optimizer == OptimizerConfig(total_steps=10, base_lr=5e-6, vision_lr=3e-6)

    prompt, let, sam2, optimizer = _sections(quickstart.get_config())
    assert prompt == dataclasses.replace(prompts.ROBOTSEG, prob_robot=0.6, prob_point=0.4, prob_box=0.0)
    assert let == LETLossConfig(cycle=dataclasses.replace(LETLossConfig().cycle, supervise_all_iou=True))
    assert optimizer == OptimizerConfig(total_steps=10, base_lr=1e-3, vision_lr=1e-3, layer_decay=1.0)
    assert eval_vrs.get_config().categories == "arm,gripper,robot"


def test_overrides_reach_nested_dataclasses():
    config = robotseg_hiera_t.get_config()
    config.let_loss.weight_semantic = 2  # an int where the field is a float, as a command line gives it
    config.let_loss.cycle.weight_mask = 10.0
    let = dataclass_from_config(LETLossConfig, config.let_loss)
    assert let.weight_semantic == 2.0 and let.cycle.weight_mask == 10.0
    assert let.weights["loss_mask"] == 10.0 and let.weights["loss_semantic"] == 2.0
    # None-valued preset fields are typed placeholders, so they can be set.
    baseline = sam2_1_hiera_t_finetune.get_config()
    baseline.prompts.prob_robot = 0.3
    assert dataclass_from_config(prompts.PromptConfig, baseline.prompts).prob_robot == 0.3


def test_unknown_keys_are_errors():
    config = robotseg_hiera_t.get_config()
    config.let_loss.weight_mask = 5.0  # the cycle terms' weights live in let_loss.cycle
    with pytest.raises(ValueError, match="weight_mask"):
        dataclass_from_config(LETLossConfig, config.let_loss)


def test_the_tiny_quickstart_is_the_quickstart_at_test_size():
    tiny, full = quickstart.get_config("tiny"), quickstart.get_config()
    assert (tiny.image_size, tiny.data.num_frames, tiny.model_overrides.hiera_stages) == (64, 2, (1, 1, 1, 1))
    assert (tiny.model, tiny.data.batch_size, tiny.optimizer) == (full.model, full.data.batch_size, full.optimizer)
    with pytest.raises(ValueError, match="the only variant is 'tiny'"):
        quickstart.get_config("huge")
