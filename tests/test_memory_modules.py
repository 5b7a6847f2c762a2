"""Parity of the memory encoder and memory attention with sam2 1.1.0 (random weights, 256 px -> 16x16 tokens)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from robotseg_jax.modeling.memory_attention import MemoryAttention
from robotseg_jax.modeling.memory_encoder import MemoryEncoder
from tests.reference import (
    max_abs_diff,
    nchw_to_nhwc,
    nhwc_to_nchw,
    to_flax,
)

pytestmark = pytest.mark.reference

TOL = 1e-4
GRID = 16  # image_size 256 / backbone stride 16
N = GRID * GRID  # tokens per frame
D_MODEL, MEM_DIM = 256, 64
TOKENS_PER_PTR = D_MODEL // MEM_DIM  # sam2 splits each 256-d object pointer into 4 memory tokens


@pytest.fixture(scope="module")
def reference(sam21_reference):
    """conftest's sam2.1_hiera_t at 256 px (seed 0), shared with the other parity tests; only read here."""
    return sam21_reference


def _convert(model, torch_module, *example_args, **static_kwargs):
    init = functools.partial(model.init, **static_kwargs)
    template = jax.eval_shape(init, jax.random.PRNGKey(0), *example_args)["params"]
    return {"params": to_flax(torch_module, template, prefix="")}


@pytest.fixture(scope="module")
def memory_encoder(reference):
    model = MemoryEncoder()
    example = (jnp.zeros((1, GRID, GRID, D_MODEL)), jnp.zeros((1, 16 * GRID, 16 * GRID, 1)))
    return model, _convert(model, reference.memory_encoder, *example)


@pytest.fixture(scope="module")
def memory_attention(reference):
    model = MemoryAttention()
    example = [jnp.zeros((1, N, dim)) for dim in (D_MODEL, MEM_DIM, D_MODEL, MEM_DIM)]
    return model, _convert(model, reference.memory_attention, *example, num_obj_ptr_tokens=0)


def _normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("skip_mask_sigmoid", [False, True])
def test_memory_encoder_matches_reference(reference, memory_encoder, skip_mask_sigmoid):
    model, params = memory_encoder
    rng = np.random.default_rng(0)
    pix_feat = _normal(rng, 2, GRID, GRID, D_MODEL)
    logits = 4 * _normal(rng, 2, 16 * GRID, 16 * GRID, 1)
    # SAM2Base skips the sigmoid after applying its own: sigmoid(logits) * 20 - 10.
    masks = 20 / (1 + np.exp(-logits)) - 10 if skip_mask_sigmoid else logits

    out = model.apply(params, pix_feat, masks, skip_mask_sigmoid=skip_mask_sigmoid)
    ref = reference.memory_encoder(nhwc_to_nchw(pix_feat), nhwc_to_nchw(masks), skip_mask_sigmoid=skip_mask_sigmoid)

    assert out["vision_features"].shape == (2, GRID, GRID, MEM_DIM)
    assert max_abs_diff(out["vision_features"], nchw_to_nhwc(ref["vision_features"])) <= TOL
    assert len(out["vision_pos_enc"]) == 1
    assert max_abs_diff(out["vision_pos_enc"][0], nchw_to_nhwc(ref["vision_pos_enc"][0])) <= TOL


def _torch_memory_attention(reference, curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens):
    """sam2's MemoryAttention on batch-first numpy arrays (it takes and returns seq-first [N, B, C])."""
    seq_first = lambda x: torch.from_numpy(np.ascontiguousarray(x)).transpose(0, 1)
    out = reference.memory_attention(
        curr=seq_first(curr),
        memory=seq_first(memory),
        curr_pos=seq_first(curr_pos),
        memory_pos=seq_first(memory_pos),
        num_obj_ptr_tokens=num_obj_ptr_tokens,
    )
    return out.transpose(0, 1).numpy()


def _attention_inputs(rng, batch, num_memory_tokens):
    return (
        _normal(rng, batch, N, D_MODEL),
        _normal(rng, batch, num_memory_tokens, MEM_DIM),
        _normal(rng, batch, N, D_MODEL),
        _normal(rng, batch, num_memory_tokens, MEM_DIM),
    )


@pytest.mark.parametrize("num_frames,num_ptrs", [(1, 0), (3, 3)])
def test_memory_attention_matches_reference(reference, memory_attention, num_frames, num_ptrs, attention_path):
    model, params = memory_attention
    num_ptr_tokens = num_ptrs * TOKENS_PER_PTR
    curr, memory, curr_pos, memory_pos = _attention_inputs(
        np.random.default_rng(1), 2, num_frames * N + num_ptr_tokens
    )

    out = model.apply(params, curr, memory, curr_pos, memory_pos, num_ptr_tokens)
    ref = _torch_memory_attention(reference, curr, memory, curr_pos, memory_pos, num_ptr_tokens)

    assert out.shape == (2, N, D_MODEL)
    assert max_abs_diff(out, ref) <= TOL


def test_masked_fixed_capacity_memory_equals_reference_on_valid_entries(reference, memory_attention, attention_path):
    model, params = memory_attention
    num_slots, num_ptr_tokens = 4, 16
    rng = np.random.default_rng(2)
    curr, memory, curr_pos, memory_pos = _attention_inputs(rng, 2, num_slots * N + num_ptr_tokens)
    # Invalid entries hold large garbage, so that any leak into the softmax shows.
    memory, memory_pos = 100 * memory, 100 * memory_pos
    valid_slots = [np.array([True, False, True, False]), np.array([False, True, True, True])]
    valid_ptrs = [np.array([True, True, False, False]), np.array([False, True, False, True])]
    memory_mask = np.stack(
        [np.concatenate([np.repeat(s, N), np.repeat(p, TOKENS_PER_PTR)]) for s, p in zip(valid_slots, valid_ptrs)]
    )
    memory = np.where(memory_mask[..., None], memory / 100, memory)
    memory_pos = np.where(memory_mask[..., None], memory_pos / 100, memory_pos)

    out = model.apply(params, curr, memory, curr_pos, memory_pos, num_ptr_tokens, memory_mask)

    for b in range(2):
        # sam2's memory: only the valid frames, then only the valid pointer tokens.
        valid = memory_mask[b]
        ref = _torch_memory_attention(
            reference,
            curr[b : b + 1],
            memory[b : b + 1, valid],
            curr_pos[b : b + 1],
            memory_pos[b : b + 1, valid],
            int(valid[-num_ptr_tokens:].sum()),
        )
        assert max_abs_diff(out[b : b + 1], ref) <= TOL


def test_all_invalid_memory_gives_finite_output(memory_attention, attention_path):
    model, params = memory_attention
    curr, memory, curr_pos, memory_pos = _attention_inputs(np.random.default_rng(3), 1, 2 * N + 8)
    memory_mask = np.zeros(memory.shape[:2], dtype=bool)
    out = model.apply(params, curr, memory, curr_pos, memory_pos, 8, memory_mask)
    assert np.all(np.isfinite(out))


def test_memory_attention_dropout_in_training(memory_attention):
    model, params = memory_attention
    inputs = _attention_inputs(np.random.default_rng(4), 1, N + 4)
    train = lambda seed: model.apply(
        params, *inputs, 4, deterministic=False, rngs={"dropout": jax.random.PRNGKey(seed)}
    )
    eval_out = model.apply(params, *inputs, 4)
    assert max_abs_diff(train(0), eval_out) > 1e-2
    assert max_abs_diff(train(0), train(0)) == 0.0
    assert max_abs_diff(train(0), train(1)) > 1e-2
