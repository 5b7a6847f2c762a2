"""A SAM 2.1 fine-tuning step here against sam2's own training code on the same machine, weights, clip and prompt
structure, in one run: clips/s of forward, loss, backward, gradient clipping and AdamW, plus this side's compile
time and model-FLOPs utilisation.

    python -m benchmarks.train_step_vs_sam2 [--image-size 256] [--batch 1] [--frames 8] [--steps 3]
                                            [--dtype float32]

PyTorch: `training.model.sam2.SAM2Train` (installed with the sam2 package) built from sam2.1_hiera_t.yaml with
its `MultiStepMultiMasksAndIous` loss (sam2.1_hiera_b+_MOSE_finetune.yaml's weights 20/1/1/1) and
`torch.optim.AdamW` after gradient clipping at 0.1; `--dtype bfloat16` runs its forward and loss under
`torch.autocast("cpu", dtype=torch.bfloat16)`, as the reference trains. Here: `train_step` with SAM 2's loss and
prompts and the same bfloat16 switch (`StepConfig.compute_dtype`). Both draw the same structure every step: one
click on frame 0 and 7 correction clicks on it (10% from the GT), frames 1+ tracked from memory, one object per
clip (a moving box). Times are medians over `--steps` steps after a warm-up step.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.common import converted_params, machine_line, markdown_table, matmul_gflops, median_seconds, ratio
from benchmarks.train_step import synthetic_batch
from robotseg_jax.modeling.config import REFERENCE_YAML, get_model_config
from robotseg_jax.modeling.robotseg import build_model
from robotseg_jax.training.optimizer import OptimizerConfig, make_optimizer
from robotseg_jax.training.prompts import PromptConfig, draw_prompts
from robotseg_jax.training.train_step import StepConfig, init_train_state, train_step
from tests.reference import perturb_

# One click and 7 corrections on frame 0, the other frames tracked: a structure both sides draw every step.
PROMPTS = PromptConfig(
    prob_point=1.0, prob_box=0.0, num_init_cond_frames=1, rand_init_cond_frames=False, num_frames_to_correct=1,
    rand_frames_to_correct=False,
)
LR, WEIGHT_DECAY, GRAD_CLIP = 5e-6, 0.1, 0.1


def reference_step(model_name: str, images: np.ndarray, masks: np.ndarray, autocast: bool):
    """sam2's SAM2Train + loss + AdamW on the clips: a function running one training step."""
    from sam2.build_sam import build_sam2
    from training.loss_fns import MultiStepMultiMasksAndIous
    from training.utils.data_utils import BatchedVideoDatapoint, BatchedVideoMetaData

    torch.manual_seed(0)
    batch, frames, size = masks.shape[:3]
    overrides = [
        "++model._target_=training.model.sam2.SAM2Train",
        f"++model.image_size={size}",
        f"++model.prob_to_use_pt_input_for_train={PROMPTS.prob_point}",
        f"++model.prob_to_use_box_input_for_train={PROMPTS.prob_box}",
        f"++model.num_frames_to_correct_for_train={PROMPTS.num_frames_to_correct}",
        f"++model.rand_frames_to_correct_for_train={PROMPTS.rand_frames_to_correct}",
        f"++model.num_init_cond_frames_for_train={PROMPTS.num_init_cond_frames}",
        f"++model.rand_init_cond_frames_for_train={PROMPTS.rand_init_cond_frames}",
        f"++model.num_correction_pt_per_frame={PROMPTS.num_correction_pts}",
        f"++model.prob_to_sample_from_gt_for_train={PROMPTS.prob_from_gt}",
        f"++model.add_all_frames_to_correct_as_cond={PROMPTS.add_all_frames_to_correct_as_cond}",
        "++model.use_act_ckpt_iterative_pt_sampling=false",
        "++model.forward_backbone_per_frame_for_eval=false",
    ]
    model = build_sam2(REFERENCE_YAML[model_name], ckpt_path=None, device="cpu", mode="train",
                       hydra_overrides_extra=overrides, apply_postprocessing=False)
    perturb_(model, 0)
    loss_fn = MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1}, supervise_all_iou=True,
        iou_use_l1_loss=True, pred_obj_scores=True, focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1.0,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    video_of_object = torch.arange(batch, dtype=torch.int32)
    datapoint = BatchedVideoDatapoint(
        img_batch=torch.from_numpy(images).permute(1, 0, 4, 2, 3).contiguous(),  # [T, B, 3, S, S]
        obj_to_frame_idx=torch.stack(
            [torch.stack([torch.full_like(video_of_object, t), video_of_object], -1) for t in range(frames)]
        ),
        masks=torch.from_numpy(masks).transpose(0, 1).contiguous(),  # [T, O, S, S]
        metadata=BatchedVideoMetaData(
            unique_objects_identifier=torch.zeros((frames, batch, 3), dtype=torch.long),
            frame_orig_size=torch.full((frames, batch, 2), size, dtype=torch.long),
        ),
        dict_key="benchmark",
        batch_size=[frames],
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            outputs = model(datapoint)
            loss = loss_fn(outputs, datapoint.masks)["core_loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        return float(loss)

    return model, step


def jax_step(model_name: str, params: dict, images: np.ndarray, masks: np.ndarray, dtype: str):
    """This project's `train_step` on the clips: (compile seconds, a function running one step, step FLOPs)."""
    config = get_model_config(model_name, image_size=masks.shape[-1])
    model = build_model(config)
    plan, from_gt = draw_prompts(np.random.default_rng(42), PROMPTS, masks.shape[1])
    optimizer = make_optimizer(params, OptimizerConfig(total_steps=1000, base_lr=LR, vision_lr=LR, layer_decay=1.0,
                                                       weight_decay=WEIGHT_DECAY, grad_clip_norm=GRAD_CLIP))
    batch = {"images": jnp.asarray(images), "masks": jnp.asarray(masks),
             "category": jnp.full((masks.shape[0],), -1, jnp.int32)}
    step_config = StepConfig(loss="sam2", compute_dtype=dtype, unroll_stages=jax.default_backend() == "cpu")
    step = jax.jit(functools.partial(train_step, plan=plan, model=model, optimizer=optimizer, config=step_config),
                   donate_argnums=0)
    state = init_train_state(params, optimizer, seed=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch, jnp.asarray(from_gt)).compile()
    compile_seconds = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost or {}
    flops = cost.get("flops", float("nan"))
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], batch, jnp.asarray(from_gt))
        return float(jax.block_until_ready(metrics["core_loss"]))

    return compile_seconds, run, flops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step_vs_sam2", description=__doc__)
    parser.add_argument("--model", default="sam2.1_hiera_t")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1, help="clips per step, one object each")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)

    clips = synthetic_batch(args.batch, args.frames, args.image_size)  # one moving box per clip
    images, masks = np.asarray(clips["images"]), np.asarray(clips["masks"])
    torch_model, torch_run = reference_step(args.model, images, masks, args.dtype == "bfloat16")
    params = converted_params(torch_model, get_model_config(args.model, image_size=args.image_size))
    compile_seconds, jax_run, flops = jax_step(args.model, params, images, masks, args.dtype)

    print(f"## SAM 2.1 fine-tuning step, {args.model} at {args.image_size}, {args.batch} clip(s) x {args.frames} "
          f"frames, {args.dtype}\n\n{machine_line()}\n")
    jax_gflops, torch_gflops = matmul_gflops(args.dtype)
    t_jax = median_seconds(jax_run, args.steps)
    t_torch = median_seconds(torch_run, args.steps)
    rows = [
        ["seconds per step", t_torch, t_jax, ratio(t_torch, t_jax)],
        ["clips/s", args.batch / t_torch, args.batch / t_jax, ratio(t_torch, t_jax)],
        ["step GFLOP/s (XLA's FLOP count of this step)", flops / 1e9 / t_torch, flops / 1e9 / t_jax, ""],
        [f"{args.dtype} matmul GFLOP/s (4096x1024x1024)", torch_gflops, jax_gflops, ""],
    ]
    print(markdown_table(["", "PyTorch sam2 (SAM2Train)", "robotseg_jax", "speed-up"], rows))
    print(f"\nrobotseg_jax: compile {compile_seconds:.0f} s; {flops / 1e9:.0f} GFLOP per step; model-FLOPs "
          f"utilisation {flops / t_jax / 1e9 / jax_gflops:.0%} of the measured matmul rate")


if __name__ == "__main__":
    main()
