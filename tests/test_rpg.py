"""RPG against a NumPy implementation of the original's algorithm (FPS seeds, one-pass cosine K-means, 3 regions
then 4 sub-clusters per region), written with loops and lists."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robotseg_jax.checkpoints.torch_keys import flax_to_torch
from robotseg_jax.modeling.rpg import (
    RobotPromptGenerator,
    farthest_point_seeds,
    foreground_on_memory_grid,
    pixel_of_rank,
)

GRID, MEM_DIM, EMBED_DIM, K, MICRO = 16, 64, 256, 3, 4
N = GRID * GRID
TOL = 1e-5


# ------------------------------------------------------------------------------------------------ NumPy reference
def np_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_fps(coords: np.ndarray, k: int, start: int) -> list[int]:
    """FPS(coords [M, 2], k) with the first seed `start` (an index into coords)."""
    m = len(coords)
    if m == 0:
        return []
    seeds, last = [start], start
    dist = np.full(m, np.inf)
    for _ in range(min(k, m) - 1):
        dist = np.minimum(dist, ((coords - coords[last]) ** 2).sum(-1))
        last = int(np.argmax(dist))  # first index on ties
        seeds.append(last)
    return seeds


def np_one_pass_kmeans(x: np.ndarray, mask: np.ndarray, seeds: list[int], k: int):
    seeds = seeds + [seeds[0]] * (k - len(seeds))
    centers = x[seeds]
    regions, protos = np.zeros((k, len(x)), bool), centers.copy()
    pixels = np.flatnonzero(mask)
    d = 1.0 - np_normalize(x[pixels]) @ np_normalize(centers).T
    for p, row in zip(pixels, d):
        regions[int(np.argmin(row)), p] = True  # first j on ties
    for j in range(k):
        if regions[j].any():
            protos[j] = x[regions[j]].mean(0)
    return regions, protos


def np_rpg(features, foreground, no_memory, rank_of):
    """features [B, S, N, C], foreground [B, S, N]; rank_of(b, s, draw, count) -> the FPS start rank."""
    batch, slots = foreground.shape[:2]
    rows, cols = np.divmod(np.arange(N), GRID)
    coords = np.stack([rows, cols], -1).astype(np.float64)
    out = np.zeros((batch, slots * K, EMBED_DIM), np.float32)

    def seeds_of(mask, b, s, draw, k):
        pixels = np.flatnonzero(mask)  # row-major
        start = rank_of(b, s, draw, len(pixels))
        return [int(pixels[i]) for i in np_fps(coords[pixels], k, start)]

    for b in range(batch):
        for s in range(slots):
            x, fg = features[b, s].astype(np.float32), foreground[b, s]
            if fg.sum() < 1:
                out[b, s * K : (s + 1) * K] = no_memory
                continue
            regions, _ = np_one_pass_kmeans(x, fg, seeds_of(fg, b, s, 0, K), K)
            for r in range(K):
                region = regions[r] if regions[r].sum() >= 1 else fg
                _, protos = np_one_pass_kmeans(x, region, seeds_of(region, b, s, 1 + r, MICRO), MICRO)
                out[b, s * K + r] = np_normalize(protos).reshape(-1)
    return out


# ----------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def rpg():
    model = RobotPromptGenerator(EMBED_DIM, K)
    # the only parameter is the no-memory vector: initialising through no_memory_tokens runs no clustering
    params = model.init(jax.random.PRNGKey(0), 1, method=RobotPromptGenerator.no_memory_tokens)
    return model, params


def _blob(rng, num_pixels: int) -> np.ndarray:
    """A foreground of exactly `num_pixels` pixels: the nearest ones to a random centre."""
    centre = rng.uniform(0, GRID, 2)
    rows, cols = np.divmod(np.arange(N), GRID)
    order = np.argsort((rows - centre[0]) ** 2 + 2 * (cols - centre[1]) ** 2, kind="stable")
    mask = np.zeros(N, bool)
    mask[order[:num_pixels]] = True
    return mask


def _features(rng, batch, slots) -> np.ndarray:
    """Features with structure (a few directions plus noise), so the clusters are not arbitrary."""
    directions = rng.standard_normal((5, MEM_DIM))
    labels = rng.integers(0, 5, (batch, slots, N))
    return (directions[labels] + 0.5 * rng.standard_normal((batch, slots, N, MEM_DIM))).astype(np.float32)


@jax.jit
def _rpg_injected(params, features, foreground, slot_valid, start_ranks):
    model = RobotPromptGenerator(EMBED_DIM, K)
    return model.apply(params, features, foreground, slot_valid, start_ranks=start_ranks)


def _run_injected(params, features, foreground, start_ranks, slot_valid=None):
    batch, slots = foreground.shape[:2]
    slot_valid = np.ones((batch, slots), bool) if slot_valid is None else slot_valid
    return _rpg_injected(
        params,
        features.reshape(batch, slots, GRID, GRID, MEM_DIM),
        foreground.reshape(batch, slots, GRID, GRID),
        slot_valid,
        start_ranks,
    )


def _no_memory(params) -> np.ndarray:
    return np.asarray(params["params"]["no_memory_prompt_embeddings_fg"]["embedding"][0])


# -------------------------------------------------------------------------------------------------------- tests
def test_parameter_key_and_shape_are_the_originals(rpg):
    _, params = rpg
    state_dict = flax_to_torch(params["params"])
    assert {k: v.shape for k, v in state_dict.items()} == {"no_memory_prompt_embeddings_fg.weight": (1, 256)}


def test_tokens_match_numpy_reference_with_injected_fps_starts(rpg):
    _, params = rpg
    rng = np.random.default_rng(0)
    batch, slots = 2, 3
    features = _features(rng, batch, slots)
    foreground = np.stack([np.stack([_blob(rng, n) for n in sizes]) for sizes in [(40, 90, 7), (150, 12, 60)]])
    start_ranks = rng.integers(0, 1000, (batch, slots, K + 1)).astype(np.int32)

    tokens, valid = _run_injected(params, features, foreground, start_ranks)
    expected = np_rpg(features, foreground, _no_memory(params), lambda b, s, d, count: start_ranks[b, s, d] % count)

    assert tokens.shape == (batch, slots * K, EMBED_DIM) and valid.shape == (batch, slots * K)
    assert np.all(valid)
    np.testing.assert_allclose(tokens, expected, atol=TOL)
    # every token is 4 unit-norm sub-prototypes
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(tokens).reshape(batch, -1, MICRO, MEM_DIM), axis=-1), 1.0, atol=1e-5
    )


@pytest.mark.parametrize(
    "fg_sizes",
    [
        (0, 30),  # no foreground in a frame: K copies of the no-memory vector
        (1, 2),  # 1 <= M < 3: duplicated macro seeds, empty regions fall back to the whole foreground
        (5, 6),  # regions with fewer than 4 pixels: duplicated micro seeds, empty sub-clusters keep seed 0
        (4, 3),
    ],
)
def test_edge_cases_match_numpy_reference(rpg, fg_sizes):
    _, params = rpg
    rng = np.random.default_rng(sum(fg_sizes))
    features = _features(rng, 1, len(fg_sizes))
    foreground = np.stack([_blob(rng, n) for n in fg_sizes])[None]
    start_ranks = rng.integers(0, 1000, (1, len(fg_sizes), K + 1)).astype(np.int32)

    tokens, _ = _run_injected(params, features, foreground, start_ranks)
    expected = np_rpg(features, foreground, _no_memory(params), lambda b, s, d, count: start_ranks[b, s, d] % count)
    np.testing.assert_allclose(tokens, expected, atol=TOL)
    if fg_sizes[0] == 0:
        np.testing.assert_array_equal(np.asarray(tokens)[0, :K], np.broadcast_to(_no_memory(params), (K, EMBED_DIM)))


def test_identical_features_tie_to_the_first_cluster(rpg):
    """All pixels alike: every cosine distance ties, so everything goes to cluster 0 (the first on ties); regions
    1 and 2 are empty and fall back to the whole foreground."""
    _, params = rpg
    rng = np.random.default_rng(5)
    features = np.broadcast_to(rng.standard_normal(MEM_DIM).astype(np.float32), (1, 1, N, MEM_DIM)).copy()
    foreground = _blob(rng, 20)[None, None]
    start_ranks = np.array([[[3, 0, 7, 19]]], np.int32)
    tokens, _ = _run_injected(params, features, foreground, start_ranks)
    expected = np_rpg(features, foreground, _no_memory(params), lambda b, s, d, count: start_ranks[b, s, d] % count)
    np.testing.assert_allclose(tokens, expected, atol=TOL)


@pytest.mark.parametrize("num_pixels,num_seeds", [(37, 3), (37, 4), (2, 4), (1, 3)])
def test_fps_start_is_the_ranked_pixel_and_seeds_follow_greedy_fps(num_pixels, num_seeds):
    """Start rank r is the r-th member pixel in row-major order (the injectable stand-in for the original's
    unseeded torch.randint); the seeds are the original's greedy FPS (first index on ties),
    and with fewer members than seeds the missing ones repeat seed 0."""
    member = _blob(np.random.default_rng(num_pixels), num_pixels)
    pixels = np.flatnonzero(member)
    rows, cols = np.divmod(np.arange(N), GRID)
    coords = np.stack([rows, cols], -1)
    fps = jax.jit(farthest_point_seeds, static_argnums=2)
    for rank in range(num_pixels):
        start = pixel_of_rank(jnp.asarray(member), rank)
        assert int(start) == pixels[rank]
        seeds = fps(jnp.asarray(member), jnp.asarray(coords, jnp.int32), num_seeds, start)
        expected = [int(pixels[i]) for i in np_fps(coords[pixels].astype(np.float64), num_seeds, rank)]
        expected += [expected[0]] * (num_seeds - len(expected))
        np.testing.assert_array_equal(seeds, expected)


def test_invalid_slots_are_flagged(rpg):
    _, params = rpg
    rng = np.random.default_rng(7)
    features = _features(rng, 2, 2)
    foreground = np.stack([np.stack([_blob(rng, 30), _blob(rng, 40)])] * 2)
    slot_valid = np.array([[True, False], [False, True]])
    _, valid = _run_injected(params, features, foreground, np.zeros((2, 2, K + 1), np.int32), slot_valid)
    np.testing.assert_array_equal(valid, np.repeat(slot_valid, K, axis=1))


def test_no_memory_tokens(rpg):
    model, params = rpg
    tokens = model.apply(params, 2, method=RobotPromptGenerator.no_memory_tokens)
    assert tokens.shape == (2, K, EMBED_DIM)
    np.testing.assert_array_equal(tokens, np.broadcast_to(_no_memory(params), (2, K, EMBED_DIM)))


def test_prng_starts_compile_once_and_follow_the_key(rpg):
    """With a key, draw d of (object b, slot s) is `randint(split(key, (B, S, 1 + K))[b, s, d], 0, count)`, and
    one compiled function serves every foreground."""
    model, params = rpg
    forward = jax.jit(
        lambda features, foreground, key: model.apply(params, features, foreground, jnp.ones((1, 2), bool), rng=key)
    )
    rng = np.random.default_rng(8)
    for seed, sizes in enumerate([(25, 0), (3, 70), (120, 9)]):
        features = _features(rng, 1, 2)
        foreground = np.stack([_blob(rng, n) for n in sizes])[None]
        key = jax.random.PRNGKey(seed)
        tokens, _ = forward(features.reshape(1, 2, GRID, GRID, MEM_DIM), foreground.reshape(1, 2, GRID, GRID), key)
        draws = jax.random.split(key, (1, 2, K + 1))
        rank_of = lambda b, s, d, count, draws=draws: int(jax.random.randint(draws[b, s, d], (), 0, max(count, 1)))
        np.testing.assert_allclose(tokens, np_rpg(features, foreground, _no_memory(params), rank_of), atol=TOL)
    assert forward._cache_size() == 1


def test_gradients_reach_the_memory_features(rpg):
    _, params = rpg
    rng = np.random.default_rng(9)
    features = jnp.asarray(_features(rng, 1, 1).reshape(1, 1, GRID, GRID, MEM_DIM))
    foreground = jnp.asarray(_blob(rng, 50).reshape(1, 1, GRID, GRID))
    model = RobotPromptGenerator(EMBED_DIM, K)
    weights = jnp.asarray(rng.standard_normal((1, K, EMBED_DIM)).astype(np.float32))
    loss = lambda f: jnp.sum(
        weights
        * model.apply(params, f, foreground, jnp.ones((1, 1), bool), start_ranks=jnp.zeros((1, 1, K + 1), jnp.int32))[0]
    )
    grads = np.asarray(jax.jit(jax.grad(loss))(features))
    assert np.all(np.isfinite(grads))
    fg = np.asarray(foreground).reshape(-1)
    assert np.abs(grads.reshape(N, MEM_DIM)[fg]).sum() > 0 and np.all(grads.reshape(N, MEM_DIM)[~fg] == 0)


@pytest.mark.reference
def test_foreground_on_memory_grid_matches_torch():
    rng = np.random.default_rng(10)
    logits = 3 * rng.standard_normal((2, 1, 64, 64)).astype(np.float32)
    ours = foreground_on_memory_grid(jnp.asarray(logits), (GRID, GRID))
    reference = (
        F.interpolate(torch.sigmoid(torch.from_numpy(logits)), size=(GRID, GRID), mode="bilinear", align_corners=False)
        >= 0.5
    )
    np.testing.assert_array_equal(ours, reference.numpy())
