"""SAM 2's loss against sam2's own training code; LET's terms against a NumPy transcription of
MultiStepMultiMasksAndIous_LET's formulas."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robotseg_jax.training import losses


def _random_step(n: int, m: int, size: int, rng: np.random.Generator) -> losses.StepOutputs:
    return losses.StepOutputs(
        multimasks=jnp.asarray(rng.normal(0, 3, (n, m, size, size)), jnp.float32),
        ious=jnp.asarray(rng.uniform(0, 1, (n, m)), jnp.float32),
        object_score_logits=jnp.asarray(rng.normal(0, 2, (n, 1)), jnp.float32),
    )


def _random_targets(t: int, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    targets = rng.random((t, n, size, size)) < 0.3
    targets[:, -1] = False  # the last object is absent everywhere: its mask terms must not count
    return targets


@pytest.mark.reference
@pytest.mark.parametrize("num_masks, supervise_all_iou", [(3, True), (3, False), (1, True)])
def test_sam2_loss_matches_sam2_training_code(num_masks, supervise_all_iou):
    from training.loss_fns import MultiStepMultiMasksAndIous

    rng = np.random.default_rng(num_masks)
    frames = [[_random_step(3, num_masks, 32, rng) for _ in range(steps)] for steps in (2, 1, 1)]
    targets = _random_targets(3, 3, 32, rng)
    config = losses.SAM2LossConfig(supervise_all_iou=supervise_all_iou)
    weights = config.weights
    got = jax.jit(losses.sam2_loss, static_argnums=3)(frames, jnp.asarray(targets), jnp.float32(3), config)

    reference = MultiStepMultiMasksAndIous(
        dict(weights), supervise_all_iou=supervise_all_iou, iou_use_l1_loss=True, pred_obj_scores=True
    )
    torch_outputs = [
        {
            "multistep_pred_multimasks_high_res": [torch.from_numpy(np.asarray(s.multimasks)) for s in steps],
            "multistep_pred_ious": [torch.from_numpy(np.asarray(s.ious)) for s in steps],
            "multistep_object_score_logits": [torch.from_numpy(np.asarray(s.object_score_logits)) for s in steps],
        }
        for steps in frames
    ]
    expected = reference(torch_outputs, torch.from_numpy(targets))
    for key in (*losses.LOSS_KEYS, "core_loss"):
        np.testing.assert_allclose(float(got[key]), float(expected[key]), rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.reference
def test_focal_loss_matches_torch_for_extreme_logits():
    logits = np.array([-200.0, -30.0, -1.0, 0.0, 2.0, 30.0, 200.0], np.float32)
    for target in (0.0, 1.0):
        targets = np.full_like(logits, target)
        got = losses.sigmoid_focal_loss(jnp.asarray(logits), jnp.asarray(targets), 0.25, 2.0)
        x, y = torch.from_numpy(logits), torch.from_numpy(targets)
        p_t = x.sigmoid() * y + (1 - x.sigmoid()) * (1 - y)
        expected = (0.25 * y + 0.75 * (1 - y)) * F.binary_cross_entropy_with_logits(x, y, reduction="none") * (1 - p_t) ** 2
        assert np.all(np.isfinite(np.asarray(got)))
        np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------- LET in NumPy
def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """F.interpolate(bilinear, align_corners=False, antialias=False) of [N, H, W]."""
    return F.interpolate(torch.from_numpy(x[:, None].astype(np.float32)), size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0].numpy().astype(np.float64)


def _focal(p_logits, t, alpha=0.25, gamma=2.0):
    p = _sigmoid(p_logits)
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return ((alpha * t + (1 - alpha) * (1 - t)) * ce * (1 - p_t) ** gamma).mean()


def _normalize(v):
    return v / max(np.linalg.norm(v), 1e-12)


def _let_numpy(stages, targets, struct_target, num_objects):
    """MultiStepMultiMasksAndIous_LET's terms written out object by object, in float64."""
    out = dict.fromkeys(losses.LET_KEYS, 0.0)
    num_stages, n_obj = targets.shape[:2]
    grid = stages[0]["feats"].shape[1]
    t0_small = _bilinear(targets[0].astype(np.float64), grid)
    anchors = [
        _normalize((stages[0]["feats"][n] * t0_small[n][..., None]).sum((0, 1)) / max(t0_small[n].sum(), 1e-6))
        for n in range(n_obj)
    ]
    for t, stage in enumerate(stages):
        target = targets[t].astype(np.float64)
        for masks, ious, obj in stage["steps"]:
            if t in (0, num_stages - 1):
                for n in range(n_obj):
                    present = float(target[n].any())
                    focal = [_focal(masks[n, m], target[n]) for m in range(masks.shape[1])]
                    dice = []
                    for m in range(masks.shape[1]):
                        p = _sigmoid(masks[n, m])
                        dice.append(1 - (2 * (p * target[n]).sum() + 1) / (p.sum() + target[n].sum() + 1))
                    best = int(np.argmin(5 * np.array(focal) + np.array(dice)))
                    pred = masks[n, best] > 0
                    iou = (pred & (target[n] > 0)).sum() / max((pred | (target[n] > 0)).sum(), 1)
                    out["loss_mask"] += focal[best] * present / num_objects
                    out["loss_dice"] += dice[best] * present / num_objects
                    out["loss_iou"] += abs(ious[n, best] - iou) * present / num_objects
                    o = obj[n, 0]
                    out["loss_class"] += -(present * np.log(_sigmoid(o)) + (1 - present) * np.log(1 - _sigmoid(o))) / num_objects
            if 0 < t < num_stages - 1:
                sims = []
                for n in range(n_obj):
                    q = _bilinear(_sigmoid(masks[n, np.argmax(ious[n])])[None], grid)[0]
                    f = _normalize((stage["feats"][n] * q[..., None]).sum((0, 1)) / max(q.sum(), 1e-6))
                    sims.append(f @ anchors[n])
                out["loss_semantic"] += (1 - np.mean(sims)) / num_objects
        if 0 < t < num_stages - 1:
            masks, ious, _ = stage["steps"][-1]
            per_obj = []
            for n in range(n_obj):
                p = _bilinear(_sigmoid(masks[n, np.argmax(ious[n])])[None], grid)[0]
                tt = _bilinear(target[n][None], grid)[0]
                per_obj.append(1 - ((p * tt).sum() + 1e-6) / ((p + tt - p * tt).sum() + 1e-6))
            out["loss_patch"] += np.mean(per_obj) / num_objects
        if t == num_stages - 1:
            diff = np.abs(_sigmoid(stage["structure"]) - struct_target[:, None])
            out["loss_structure"] += diff.mean() / num_objects
    weights = losses.LETLossConfig().weights
    out["core_loss"] = sum(weights[k] * out[k] for k in losses.LET_KEYS)
    return out


@pytest.mark.reference
def test_let_loss_matches_a_numpy_transcription_of_the_let_formulas():
    rng = np.random.default_rng(7)
    num_stages, n_obj, size, grid, channels = 7, 2, 64, 4, 8
    targets = rng.random((num_stages, n_obj, size, size)) < 0.4
    targets[3, 1] = False  # an empty pseudo mask between: semantic/patch still count it
    np_stages, jax_stages = [], []
    for t in range(num_stages):
        steps = [_random_step(n_obj, 3, size, rng) for _ in range(4 if t == 0 else 1)]
        feats = rng.normal(size=(n_obj, grid, grid, channels)).astype(np.float32)
        structure = rng.normal(size=(n_obj, 4, size, size)).astype(np.float32) if t == num_stages - 1 else None
        np_stages.append({
            "steps": [tuple(np.asarray(x, np.float64) for x in (s.multimasks, s.ious, s.object_score_logits)) for s in steps],
            "feats": feats.astype(np.float64),
            "structure": None if structure is None else structure.astype(np.float64),
        })
        jax_stages.append(losses.LETStage(tuple(steps), jnp.asarray(feats), None if structure is None else jnp.asarray(structure)))
    struct_target = np.abs(rng.normal(size=(n_obj, size, size))).astype(np.float32)
    struct_target /= struct_target.max(axis=(1, 2), keepdims=True)

    got = jax.jit(losses.let_loss)(jax_stages, jnp.asarray(targets), jnp.asarray(struct_target), jnp.float32(n_obj))
    expected = _let_numpy(np_stages, targets, struct_target.astype(np.float64), n_obj)
    for key in (*losses.LET_KEYS, "core_loss"):
        np.testing.assert_allclose(float(got[key]), expected[key], rtol=2e-5, atol=1e-6, err_msg=key)
    assert all(float(got[k]) > 0 for k in losses.LET_KEYS)

    # Under data parallelism the mean-over-objects terms are divided by the objects per GPU instead (here 1).
    per_gpu = losses.let_loss(jax_stages, jnp.asarray(targets), jnp.asarray(struct_target), jnp.float32(n_obj),
                              mean_term_objects=jnp.float32(1))
    for key in losses.LET_KEYS:
        scale = n_obj if key in ("loss_semantic", "loss_patch", "loss_structure") else 1
        np.testing.assert_allclose(float(per_gpu[key]), scale * float(got[key]), rtol=1e-6, err_msg=key)

    # The switch that trains every mask's IoU (off in the reference): the IoU term becomes the mean over masks.
    cycle = dataclasses.replace(losses.LETLossConfig().cycle, supervise_all_iou=True)
    config = losses.LETLossConfig(cycle=cycle)
    all_iou = losses.let_loss(jax_stages, jnp.asarray(targets), jnp.asarray(struct_target), jnp.float32(n_obj), config)
    assert float(all_iou["loss_iou"]) != float(got["loss_iou"])
    np.testing.assert_allclose(float(all_iou["loss_mask"]), float(got["loss_mask"]), rtol=1e-6)


def test_semantic_term_of_an_all_background_prediction_has_finite_gradients():
    """F.normalize of a zero vector has gradient 0 in torch; a prediction with no foreground must not give NaN."""
    feats = jnp.asarray(np.random.default_rng(3).normal(size=(1, 4, 4, 8)), jnp.float32)
    grad = jax.grad(lambda f: losses.masked_average(f, jnp.zeros((1, 4, 4))).sum())(feats)
    assert np.isfinite(np.asarray(grad)).all()


def test_let_loss_on_a_single_image_has_only_cycle_terms():
    rng = np.random.default_rng(1)
    step = _random_step(10, 3, 32, rng)
    stage = losses.LETStage((step,), jnp.asarray(rng.normal(size=(10, 2, 2, 8)), jnp.float32))
    targets = jnp.asarray(rng.random((1, 10, 32, 32)) < 0.5)
    got = losses.let_loss([stage], targets, None, jnp.float32(10))
    assert float(got["loss_semantic"]) == float(got["loss_patch"]) == float(got["loss_structure"]) == 0.0
    assert float(got["loss_mask"]) > 0


def test_let_loss_gradients_reach_the_anchor_features():
    """The stage-0 anchor is not detached, as in the reference: the semantic term moves stage 0's backbone features."""
    rng = np.random.default_rng(2)
    feats = [jnp.asarray(rng.normal(size=(1, 4, 4, 8)), jnp.float32) for _ in range(3)]
    steps = [[_random_step(1, 3, 64, rng)] for _ in range(3)]
    targets = jnp.asarray(rng.random((3, 1, 64, 64)) < 0.5)
    structure = jnp.asarray(rng.normal(size=(1, 4, 64, 64)), jnp.float32)
    struct_target = jnp.asarray(rng.random((1, 64, 64)), jnp.float32)

    def semantic(f0):
        stages = [losses.LETStage(tuple(steps[0]), f0), losses.LETStage(tuple(steps[1]), feats[1]),
                  losses.LETStage(tuple(steps[2]), feats[2], structure)]
        return losses.let_loss(stages, targets, struct_target, jnp.float32(1))["loss_semantic"]

    assert float(jnp.abs(jax.grad(semantic)(feats[0])).max()) > 0
