"""Prompt simulation (robotseg_jax/training/prompts.py) against sam2's samplers and SAM2Train's draws."""

from __future__ import annotations

import types
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sam2.modeling import sam2_utils
from scipy import stats

from robotseg_jax.modeling.config import SAM2Config
from robotseg_jax.modeling.sam2 import use_multimask
from robotseg_jax.training import prompts
from robotseg_jax.training.prompts import (
    ROBOTSEG,
    SAM21_MOSE_FINETUNE,
    correction_click,
    draw_prompts,
    initial_points,
    noisy_box,
    uniform_click,
)

N_SAMPLES = 20_000
KEY = jax.random.key(0)


def _grid(rows: list[str]) -> np.ndarray:
    """A bool [H, W] mask from rows of '.'/'#'."""
    return np.array([[c == "#" for c in row] for row in rows])


GT = _grid(["......", ".###..", ".####.", "..##..", "......"])
PRED = _grid(["..##..", ".#....", ".####.", "..###.", "......"])


def _tile(mask: np.ndarray, n: int = N_SAMPLES) -> np.ndarray:
    return np.broadcast_to(mask, (n, *mask.shape))


def _counts(coords, labels, shape) -> dict[tuple[int, int, int], int]:
    """{(x, y, label): count} of [N, 1, 2] coords and [N, 1] labels."""
    coords, labels = np.asarray(coords)[:, 0], np.asarray(labels)[:, 0]
    assert np.all(coords == np.round(coords)) and np.all(coords >= 0)
    assert np.all(coords[:, 0] < shape[1]) and np.all(coords[:, 1] < shape[0])
    keys, counts = np.unique(np.column_stack([coords.astype(int), labels]), axis=0, return_counts=True)
    return {tuple(k): c for k, c in zip(keys.tolist(), counts.tolist())}


def _torch_errors(gt: np.ndarray, pred: np.ndarray | None, n: int = N_SAMPLES):
    torch.manual_seed(0)
    gt_t = torch.from_numpy(np.ascontiguousarray(_tile(gt, n)))[:, None]
    pred_t = None if pred is None else torch.from_numpy(np.ascontiguousarray(_tile(pred, n)))[:, None]
    return sam2_utils.sample_random_points_from_errors(gt_t, pred_t)


def _assert_uniform(counts: dict, support: set) -> None:
    assert set(counts) == support
    observed = np.array([counts[k] for k in sorted(support)])
    assert stats.chisquare(observed).pvalue > 1e-4, observed


# ------------------------------------------------------------------------------------------------ clicks
@pytest.mark.reference
def test_uniform_click_covers_gt_uniformly_like_sam2():
    keys = jax.random.split(KEY, N_SAMPLES)
    coords, labels = jax.vmap(lambda k: uniform_click(k, jnp.asarray(GT)[None]))(keys)
    assert coords.shape == (N_SAMPLES, 1, 1, 2) and coords.dtype == jnp.float32
    assert labels.shape == (N_SAMPLES, 1, 1) and labels.dtype == jnp.int32
    ours = _counts(coords[:, 0], labels[:, 0], GT.shape)
    support = {(x, y, 1) for y, x in zip(*np.nonzero(GT))}
    _assert_uniform(ours, support)
    _assert_uniform(_counts(*_torch_errors(GT, None), GT.shape), support)


@pytest.mark.reference
def test_click_coordinates_are_column_row_pixels_like_sam2():
    """Single-pixel regions make both samplers deterministic: x = column, y = row, no +0.5."""
    for y, x in [(0, 0), (2, 4), (4, 5), (1, 1)]:
        one = np.zeros_like(GT)
        one[y, x] = True
        cases = [(one, None), (GT & ~one, GT | one), (GT | one, GT & ~one)]  # a lone GT pixel, FP, FN
        for gt, pred in cases:
            if pred is None:
                ours = uniform_click(KEY, jnp.asarray(gt)[None])
            else:
                ours = correction_click(KEY, jnp.asarray(pred)[None], jnp.asarray(gt)[None])
            ref = _torch_errors(gt, pred, n=1)
            np.testing.assert_array_equal(np.asarray(ours[0]), ref[0].numpy())
            np.testing.assert_array_equal(np.asarray(ours[1]), ref[1].numpy())
            assert np.asarray(ours[0]).tolist() == [[[x, y]]]


@pytest.mark.reference
def test_empty_gt_gives_uniform_negative_clicks_like_sam2():
    empty = np.zeros_like(GT)
    support = {(x, y, 0) for y in range(GT.shape[0]) for x in range(GT.shape[1])}
    _assert_uniform(_counts(*uniform_click(KEY, jnp.asarray(_tile(empty))), GT.shape), support)
    _assert_uniform(_counts(*_torch_errors(empty, None), GT.shape), support)


@pytest.mark.reference
def test_correction_click_samples_error_union_with_labels_like_sam2():
    ours = _counts(*correction_click(KEY, jnp.asarray(_tile(PRED)), jnp.asarray(_tile(GT))), GT.shape)
    fn, fp = GT & ~PRED, ~GT & PRED
    support = {(x, y, 1) for y, x in zip(*np.nonzero(fn))} | {(x, y, 0) for y, x in zip(*np.nonzero(fp))}
    _assert_uniform(ours, support)
    ref = _counts(*_torch_errors(GT, PRED), GT.shape)
    _assert_uniform(ref, support)
    # the two samplers agree in distribution (two-sample chi-square on the contingency table)
    table = np.array([[ours[k] for k in sorted(support)], [ref[k] for k in sorted(support)]])
    assert stats.chi2_contingency(table).pvalue > 1e-4


def test_correction_click_takes_logits_and_from_gt_flags():
    logits = jnp.asarray(np.where(PRED, 3.0, -3.0))[None]
    for key in jax.random.split(KEY, 5):
        np.testing.assert_array_equal(
            correction_click(key, logits, jnp.asarray(GT)[None])[0],
            correction_click(key, jnp.asarray(PRED)[None], jnp.asarray(GT)[None])[0],
        )
    # from_gt per object: object 0 samples GT positives, object 1 the errors of its prediction
    n = 10_000
    pred, gt = jnp.asarray(_tile(PRED, 2 * n)), jnp.asarray(_tile(GT, 2 * n))
    from_gt = jnp.arange(2 * n) % 2 == 0
    coords, labels = correction_click(KEY, pred, gt, from_gt)
    _assert_uniform(_counts(coords[0::2], labels[0::2], GT.shape), {(x, y, 1) for y, x in zip(*np.nonzero(GT))})
    errors = {(x, y, 1) for y, x in zip(*np.nonzero(GT & ~PRED))} | {(x, y, 0) for y, x in zip(*np.nonzero(~GT & PRED))}
    _assert_uniform(_counts(coords[1::2], labels[1::2], GT.shape), errors)
    # a scalar flag applies to every object
    _, all_gt = correction_click(KEY, pred, gt, True)
    assert np.all(np.asarray(all_gt) == 1)


@pytest.mark.reference
@pytest.mark.parametrize("full", [False, True])
def test_correct_prediction_like_sam2(full):
    """A perfect prediction gives a negative click in the background; with no background either, sam2's argmax
    over all-zero noise returns pixel (0, 0) with label 0."""
    gt = np.ones_like(GT) if full else GT
    coords, labels = correction_click(KEY, jnp.asarray(_tile(gt)), jnp.asarray(_tile(gt)))
    ref = _counts(*_torch_errors(gt, gt), GT.shape)
    if full:
        assert _counts(coords, labels, GT.shape) == ref == {(0, 0, 0): N_SAMPLES}
    else:
        support = {(x, y, 0) for y, x in zip(*np.nonzero(~gt))}
        _assert_uniform(_counts(coords, labels, GT.shape), support)
        _assert_uniform(ref, support)


# ------------------------------------------------------------------------------------------------ boxes
def _patched_rand(uniforms: torch.Tensor):
    """Makes sam2's `torch.rand` return `uniforms`, so that its box noise is ours."""
    return mock.patch.object(torch, "rand", lambda *shape, device=None: uniforms)


def _random_masks(rng: np.random.Generator, n: int, h: int, w: int, stray: int = 3) -> np.ndarray:
    """Rectangles of random size and place (some touching the border, the first one empty), plus `stray`
    random pixels each, so that a box is not just the rectangle."""
    masks = np.zeros((n, h, w), bool)
    for m in masks[1:]:
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0, h), rng.integers(x0, w)
        m[y0 : y1 + 1, x0 : x1 + 1] = True
        m[rng.integers(0, h, stray), rng.integers(0, w, stray)] = True
    return masks


@pytest.mark.reference
def test_box_without_noise_is_sam2_tight_box():
    masks = _random_masks(np.random.default_rng(0), 16, 24, 40)
    coords, labels = noisy_box(KEY, jnp.asarray(masks), noise=0.0)
    ref_coords, ref_labels = sam2_utils.sample_box_points(torch.from_numpy(masks)[:, None], noise=0.0)
    np.testing.assert_array_equal(np.asarray(coords), ref_coords.numpy())
    np.testing.assert_array_equal(np.asarray(labels), ref_labels.numpy())
    np.testing.assert_array_equal(np.asarray(coords[0]), [[40, 24], [-1, -1]])  # empty mask, as mask_to_box


@pytest.mark.reference
def test_box_noise_matches_sam2_given_the_same_uniforms():
    masks = _random_masks(np.random.default_rng(1), 64, 300, 260)
    key = jax.random.key(3)
    coords, labels = noisy_box(key, jnp.asarray(masks))
    uniforms = torch.from_numpy(np.asarray(jax.random.uniform(key, (64, 4))).reshape(64, 1, 4))
    with _patched_rand(uniforms):
        ref_coords, ref_labels = sam2_utils.sample_box_points(torch.from_numpy(masks)[:, None])
    np.testing.assert_array_equal(np.asarray(coords), ref_coords.numpy())
    np.testing.assert_array_equal(np.asarray(labels), ref_labels.numpy())


def test_box_noise_is_bounded_and_clamped():
    h, w, n = 300, 260, 64
    masks = _random_masks(np.random.default_rng(2), n, h, w, stray=0)[1:]
    tight, _ = noisy_box(KEY, jnp.asarray(masks), noise=0.0)
    tight = np.asarray(tight).reshape(-1, 4)
    bound = np.minimum(0.1 * (tight[:, 2:] - tight[:, :2]), 20.0)  # [dx, dy]
    bound = np.concatenate([bound, bound], axis=1)
    moved, sample = [], jax.jit(noisy_box)
    for key in jax.random.split(KEY, 50):
        coords, labels = sample(key, jnp.asarray(masks))
        box = np.asarray(coords).reshape(-1, 4)
        assert np.all(box >= 0) and np.all(box[:, 0::2] <= w - 1) and np.all(box[:, 1::2] <= h - 1)
        assert np.all(np.abs(box - tight) <= bound + 1e-4)
        assert np.all(np.asarray(labels) == [2, 3])
        moved.append(np.abs(box - tight))
    # the noise uses its range: the cap of 20 px is reached for big boxes, 10% of w/h for small ones
    reach = np.max(moved, axis=0)
    unclamped = (tight - bound >= 0) & (tight[:, [0, 1, 0, 1]] + bound <= [w - 1, h - 1, w - 1, h - 1])
    assert np.all(reach[unclamped] >= 0.8 * bound[unclamped])
    assert np.any(bound == 20.0) and np.any((bound > 0) & (bound < 20.0))


@pytest.mark.reference
def test_empty_mask_box_like_sam2():
    empty = np.zeros((1, 30, 50), bool)
    for key in jax.random.split(KEY, 10):
        coords, _ = noisy_box(key, jnp.asarray(empty))
        uniforms = torch.from_numpy(np.asarray(jax.random.uniform(key, (1, 4))).reshape(1, 1, 4))
        with _patched_rand(uniforms):
            ref, _ = sam2_utils.sample_box_points(torch.from_numpy(empty)[:, None])
        np.testing.assert_array_equal(np.asarray(coords), ref.numpy())


# ------------------------------------------------------------------------------------------------ jit
def test_samplers_compile_once_for_different_masks():
    traces = []

    @jax.jit
    def sample(key, gt, pred, from_gt):
        traces.append(1)
        k1, k2, k3 = jax.random.split(key, 3)
        return uniform_click(k1, gt), correction_click(k2, pred, gt, from_gt), noisy_box(k3, gt)

    rng = np.random.default_rng(0)
    for i in range(4):
        gt = jnp.asarray(_random_masks(rng, 3, 24, 40))
        pred = jnp.asarray(rng.normal(size=(3, 24, 40)), jnp.float32)
        (click, _), (correction, _), (box, _) = sample(jax.random.key(i), gt, pred, jnp.array([i % 2 == 0, False, True]))
        assert click.shape == correction.shape == (3, 1, 2) and box.shape == (3, 2, 2)
    assert len(traces) == 1


# ------------------------------------------------------------------------------------------------ plans
def _sam2_reference_draw(rng: np.random.Generator, num_frames: int):
    """SAM2Train.prepare_prompt_inputs and the correction loop of forward_tracking, run on a stand-in `self`
    (the MOSE fine-tune settings) with the SAM heads stubbed out; returns what decides the prompt structure."""
    from training.model import sam2 as sam2_train

    cfg = SAM21_MOSE_FINETUNE
    heads = tuple(torch.zeros(1, 1, 8, 8) for _ in range(7))
    model = types.SimpleNamespace(
        training=True,
        rng=rng,
        prob_to_use_pt_input_for_train=cfg.prob_point,
        prob_to_use_box_input_for_train=cfg.prob_box,
        num_frames_to_correct_for_train=cfg.num_frames_to_correct,
        rand_frames_to_correct_for_train=cfg.rand_frames_to_correct,
        num_init_cond_frames_for_train=cfg.num_init_cond_frames,
        rand_init_cond_frames_for_train=cfg.rand_init_cond_frames,
        prob_to_sample_from_gt_for_train=cfg.prob_from_gt,
        num_correction_pt_per_frame=cfg.num_correction_pts,
        add_all_frames_to_correct_as_cond=cfg.add_all_frames_to_correct_as_cond,
        use_act_ckpt_iterative_pt_sampling=False,
        pt_sampling_for_eval="center",
        _use_multimask=lambda is_init_cond_frame, point_inputs: False,
        _forward_sam_heads=lambda **kwargs: heads,
    )
    masks = [torch.ones(1, 8, 8, dtype=torch.bool) for _ in range(num_frames)]
    out = sam2_train.SAM2Train.prepare_prompt_inputs(model, {}, types.SimpleNamespace(masks=masks, num_frames=num_frames))
    order = out["init_cond_frames"] + out["frames_not_in_init_cond"]
    from_gt, real_get_next_point = [], sam2_train.get_next_point

    def recording_get_next_point(gt_masks, pred_masks, method):
        from_gt.append(pred_masks is None)
        return real_get_next_point(gt_masks, pred_masks, method)

    with mock.patch.object(sam2_train, "get_next_point", recording_get_next_point):
        for t in order:
            if t in out["frames_to_add_correction_pt"]:
                point_inputs = out["point_inputs_per_frame"][t] if t in out["init_cond_frames"] else None
                sam2_train.SAM2Train._iter_correct_pt_sampling(
                    model, t in out["init_cond_frames"], point_inputs, out["gt_masks_per_frame"][t], None, None,
                    *heads[:3], heads[3], heads[4], heads[6], {},
                )
    corrected = [t for t in order if t in out["frames_to_add_correction_pt"]]
    box = [t for t, p in out["point_inputs_per_frame"].items() if p["point_labels"][0, 0] == 2]
    mode = "point" if out["use_pt_input"] else "mask"
    assert set(out["mask_inputs_per_frame"]) == (set() if out["use_pt_input"] else set(out["init_cond_frames"]))
    return mode, tuple(out["init_cond_frames"]), tuple(box), tuple(corrected), from_gt


@pytest.mark.reference
def test_sam2_draw_follows_sam2train_rng_stream_exactly():
    ours_rng, ref_rng = np.random.default_rng(42), np.random.default_rng(42)
    seen = set()
    for i in range(150):
        num_frames = 1 if i % 10 == 9 else 8
        plan, from_gt = draw_prompts(ours_rng, SAM21_MOSE_FINETUNE, num_frames)
        mode, init, box, corrected, ref_from_gt = _sam2_reference_draw(ref_rng, num_frames)
        assert (plan.mode, plan.init_cond_frames, plan.box_frames, plan.correct_frames) == (mode, init, box, corrected)
        assert from_gt.ravel().tolist() == ref_from_gt
        assert from_gt.shape == (len(corrected), 7)
        assert plan.cond_frames == init + tuple(t for t in corrected if t not in init)
        assert ours_rng.bit_generator.state == ref_rng.bit_generator.state
        seen.add((mode, len(init), len(box), len(corrected)))
    # every branch of the draw was exercised
    assert {("mask", 1, 0, 0), ("mask", 2, 0, 0), ("point", 1, 1, 1), ("point", 1, 0, 2), ("point", 2, 2, 2)} <= seen


def test_robotseg_draw_frequencies_and_rng_consumption():
    rng = np.random.default_rng(42)
    modes, boxes, flags = [], [], []
    for _ in range(10_000):
        before = np.random.default_rng()
        before.bit_generator.state = rng.bit_generator.state
        plan, from_gt = draw_prompts(rng, ROBOTSEG, 7)
        modes.append(plan.mode)
        # one draw for the mode; in point mode one for the box and one per correction click (3 on stage 0)
        before.random(1 if plan.mode != "point" else 1 + 1 + 3)
        assert before.bit_generator.state == rng.bit_generator.state
        assert plan.init_cond_frames == plan.cond_frames == (0,)
        if plan.mode == "point":
            assert plan.correct_frames == (0,) and from_gt.shape == (1, 3)
            boxes.append(plan.box_frames == (0,))
            flags.extend(from_gt.ravel())
        else:
            assert plan.correct_frames == plan.box_frames == () and from_gt.shape == (0, 3)
    modes = np.array(modes)
    for mode, p in [("robot", 0.4), ("mask", 0.2), ("point", 0.4)]:
        assert abs(np.mean(modes == mode) - p) < 0.02, mode
    assert abs(np.mean(boxes) - 0.5) < 0.03
    assert abs(np.mean(flags) - 0.1) < 0.01


def test_robotseg_images_have_no_mask_mode():
    rng = np.random.default_rng(42)
    modes = np.array([draw_prompts(rng, ROBOTSEG, 1)[0].mode for _ in range(10_000)])
    assert set(modes) == {"robot", "point"}
    assert abs(np.mean(modes == "robot") - 0.4) < 0.02


def test_draws_are_reproducible_from_the_seed():
    for config, num_frames in [(ROBOTSEG, 7), (ROBOTSEG, 1), (SAM21_MOSE_FINETUNE, 8)]:
        a, b = np.random.default_rng(42), np.random.default_rng(42)
        for _ in range(200):
            (plan_a, gt_a), (plan_b, gt_b) = draw_prompts(a, config, num_frames), draw_prompts(b, config, num_frames)
            assert plan_a == plan_b and hash(plan_a) == hash(plan_b)
            np.testing.assert_array_equal(gt_a, gt_b)


def test_multimask_rules_of_robotseg_training():
    """Stage 0 in robot mode (0 clicks) or with 1 click -> 3 masks; a box or >= 2 clicks -> 1 mask; tracked
    stages (0 points) -> 3 masks."""
    cfg = SAM2Config()
    rng = np.random.default_rng(42)
    plans = {}
    while len(plans) < 4:
        plan, _ = draw_prompts(rng, ROBOTSEG, 7)
        plans.setdefault((plan.mode, bool(plan.box_frames)), plan)
    multimask = {k: [use_multimask(cfg, True, p.num_points(0, s)) for s in range(p.num_correction_pts + 1)
                     if s == 0 or 0 in p.correct_frames] for k, p in plans.items()}
    assert multimask == {
        ("robot", False): [True],
        ("mask", False): [True],  # unused: mask-as-output skips the heads
        ("point", False): [True, False, False, False],
        ("point", True): [False, False, False, False],
    }
    for plan in plans.values():
        assert all(use_multimask(cfg, False, plan.num_points(t)) for t in range(1, 7))
    with pytest.raises(ValueError):
        plans[("robot", False)].num_points(0, 1)


def test_initial_points_follow_the_plan():
    rng = np.random.default_rng(42)
    gt = jnp.asarray(_tile(GT, 2))
    for _ in range(16):
        plan, _ = draw_prompts(rng, SAM21_MOSE_FINETUNE, 8)
        for t in plan.processing_order[:3]:
            points = initial_points(KEY, plan.first_prompt(t), gt)
            if plan.mode != "point" or t not in plan.init_cond_frames:
                assert points is None
            elif t in plan.box_frames:
                np.testing.assert_array_equal(points[1], [[2, 3], [2, 3]])
            else:
                np.testing.assert_array_equal(points[1], [[1], [1]])


def test_config_rejects_fewer_corrected_than_init_cond_frames():
    with pytest.raises(ValueError):
        prompts.PromptConfig(num_init_cond_frames=3, num_frames_to_correct=2)
