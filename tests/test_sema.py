"""SEMA against a torch implementation of the original's structure branch.

The reference is sam2 1.1.0's MemoryAttentionLayer for the main branch (the original's is exactly SAM 2.1's) and
RoPEAttention for the structure cross-attention (configured like the main cross-attention), with the rest of the
structure branch in torch functional ops in the original's NCHW layout, on the weights of the Flax model exported
with checkpoints.torch_keys.flax_to_torch (so the key mapping is exercised too). Small size: 256 px -> 16x16 tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sam2.modeling.memory_attention import MemoryAttention as TorchMemoryAttention
from sam2.modeling.memory_attention import (
    MemoryAttentionLayer as TorchMemoryAttentionLayer,
)
from sam2.modeling.sam.transformer import RoPEAttention as TorchRoPEAttention

from robotseg_jax.checkpoints.torch_keys import flax_to_torch
from robotseg_jax.data.sim.textures import random_texture
from robotseg_jax.modeling.sema import SEMAMemoryAttention
from tests.reference import max_abs_diff

torch.set_grad_enabled(False)

TOL = 1e-4
GRID, IMAGE = 16, 256
N = GRID * GRID
D_MODEL, MEM_DIM, NUM_LAYERS = 256, 64, 4
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# The keys RobotSeg adds to each `memory_attention.layers.{i}.` and their PyTorch shapes.
SEMA_KEY_SHAPES = {
    "structure_strength": (),
    "cross_attn_structure.q_proj.weight": (256, 256),
    "cross_attn_structure.q_proj.bias": (256,),
    "cross_attn_structure.k_proj.weight": (256, 64),
    "cross_attn_structure.k_proj.bias": (256,),
    "cross_attn_structure.v_proj.weight": (256, 64),
    "cross_attn_structure.v_proj.bias": (256,),
    "cross_attn_structure.out_proj.weight": (256, 256),
    "cross_attn_structure.out_proj.bias": (256,),
    **{
        key: shape
        for k in (3, 5, 7)
        for key, shape in {
            f"ms_pyramid.conv{k}.dw.weight": (256, 1, k, k),
            f"ms_pyramid.conv{k}.pw.weight": (256, 256, 1, 1),
            f"ms_pyramid.conv{k}.pw.bias": (256,),
            f"ms_pyramid.conv{k}.norm.weight": (256,),
            f"ms_pyramid.conv{k}.norm.bias": (256,),
        }.items()
    },
    "ms_pyramid.fuse.weight": (256, 768, 1, 1),
    "ms_pyramid.fuse.bias": (256,),
    "structure_head.weight": (1, 256, 3, 3),
    "structure_head.bias": (1,),
}


def _torch_rope_attention(rope_k_repeat: bool, kv_in_dim: int | None) -> TorchRoPEAttention:
    return TorchRoPEAttention(
        rope_theta=10000.0,
        feat_sizes=[GRID, GRID],
        rope_k_repeat=rope_k_repeat,
        embedding_dim=D_MODEL,
        num_heads=1,
        downsample_rate=1,
        dropout=0.1,
        kv_in_dim=kv_in_dim,
    )


class TorchSEMAReference:
    """The original's SEMA layers in torch on a flat state dict with RobotSeg's keys (prefix `layers.{i}.` /
    `norm.`)."""

    def __init__(self, state_dict: dict[str, np.ndarray]):
        layer = TorchMemoryAttentionLayer(
            activation="relu",
            cross_attention=_torch_rope_attention(True, MEM_DIM),
            d_model=D_MODEL,
            dim_feedforward=2048,
            dropout=0.1,
            pos_enc_at_attn=False,
            pos_enc_at_cross_attn_keys=True,
            pos_enc_at_cross_attn_queries=False,
            self_attention=_torch_rope_attention(False, None),
        )
        self.sam2 = TorchMemoryAttention(D_MODEL, pos_enc_at_input=True, layer=layer, num_layers=NUM_LAYERS).eval()
        sd = {k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}
        sam2_keys = set(self.sam2.state_dict())
        self.sam2.load_state_dict({k: v for k, v in sd.items() if k in sam2_keys}, strict=True)
        self.sema = [
            {
                k[len(f"layers.{i}.") :]: v
                for k, v in sd.items()
                if k.startswith(f"layers.{i}.") and k[len(f"layers.{i}.") :] in SEMA_KEY_SHAPES
            }
            for i in range(NUM_LAYERS)
        ]
        self.structure_attn = []
        for weights in self.sema:
            attn = _torch_rope_attention(True, MEM_DIM).eval()
            attn.load_state_dict(
                {
                    k[len("cross_attn_structure.") :]: v
                    for k, v in weights.items()
                    if k.startswith("cross_attn_structure.")
                }
            )
            self.structure_attn.append(attn)

    @staticmethod
    def edge_map(raw_image: torch.Tensor) -> torch.Tensor:
        """The original's EdgeMap: `_safe_to_gray`, then the first return value of kornia's canny, fp32, clamped."""
        x = raw_image / 255.0 if raw_image.max() > 1.5 else raw_image
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)
        return kornia.filters.canny(gray, 0.1, 0.2)[0].float().clamp(0, 1)

    @staticmethod
    def pyramid(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        def ds_conv(k: int) -> torch.Tensor:
            p = f"ms_pyramid.conv{k}."
            y = F.gelu(F.conv2d(x, w[p + "dw.weight"], padding=(k - 1) // 2, groups=D_MODEL))
            y = F.conv2d(y, w[p + "pw.weight"], w[p + "pw.bias"])
            return F.gelu(F.group_norm(y, 32, w[p + "norm.weight"], w[p + "norm.bias"], eps=1e-5))

        fused = F.conv2d(
            torch.cat([ds_conv(3), ds_conv(5), ds_conv(7)], 1), w["ms_pyramid.fuse.weight"], w["ms_pyramid.fuse.bias"]
        )
        return F.gelu(fused)

    def __call__(self, curr, memory, curr_pos, memory_pos, num_ptr_tokens, raw_image_nchw):
        """Batch-first torch tensors; returns (output [B, N, C], structure logits [B, 4, 16h, 16w])."""
        e = F.interpolate(self.edge_map(raw_image_nchw), size=(GRID, GRID), mode="bilinear", align_corners=False)
        e = e.clamp(0, 1)
        to_map = lambda t: t.transpose(1, 2).reshape(t.shape[0], D_MODEL, GRID, GRID)
        output = curr + 0.1 * curr_pos
        maps = []
        for layer, w, structure_attn in zip(self.sam2.layers, self.sema, self.structure_attn):
            t1 = layer._forward_sa(output, curr_pos)
            t2 = layer._forward_ca(t1, memory, curr_pos, memory_pos, num_ptr_tokens)
            t3 = t2 + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm3(t2))))))
            features = to_map(t2) * (1 + e)
            q = self.pyramid(features, w).flatten(2).transpose(1, 2)
            kwds = {"num_k_exclude_rope": num_ptr_tokens} if num_ptr_tokens > 0 else {}
            s = structure_attn(q, memory + memory_pos, memory, **kwds)
            s64 = F.conv2d(to_map(s), w["structure_head.weight"], w["structure_head.bias"], padding=1)
            structure = F.interpolate(s64, scale_factor=16, mode="bilinear", align_corners=False)
            g = F.interpolate(torch.sigmoid(structure), size=(GRID, GRID), mode="bilinear", align_corners=False)
            out = to_map(t3) * (1 + w["structure_strength"] * g)
            output = out.flatten(2).transpose(1, 2)
            maps.append(structure)
        return self.sam2.norm(output), torch.cat(maps, 1)


def _random_params(template, seed: int):
    """Random weights shaped like `template` (a tree of ShapeDtypeStructs, from jax.eval_shape, which compiles
    nothing): kernels N(0, 1/fan_in), biases N(0, 0.05), scales and alpha 1 + N(0, 0.05), so that every leaf
    takes part in the comparison."""
    rng = np.random.default_rng(seed)

    def sample(path, leaf):
        name = path[-1].key
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if name == "kernel":
            return jnp.asarray(noise / np.sqrt(np.prod(leaf.shape[:-1])))
        return jnp.asarray((1.0 if name in ("scale", "structure_strength") else 0.0) + 0.05 * noise)

    return jax.tree_util.tree_map_with_path(sample, template)


@pytest.fixture(scope="module")
def model_and_params():
    model = SEMAMemoryAttention(edge_nms_ties="opencv")  # the tie rule of the pinned kornia, the reference here
    example = [jnp.zeros((1, N, dim)) for dim in (D_MODEL, MEM_DIM, D_MODEL, MEM_DIM)]
    init = lambda key: model.init(key, *example, 0, raw_image=jnp.zeros((1, IMAGE, IMAGE, 3)))
    return model, _random_params(jax.eval_shape(init, jax.random.PRNGKey(0))["params"], seed=1)


@pytest.fixture(scope="module")
def reference(model_and_params):
    return TorchSEMAReference(flax_to_torch(model_and_params[1]))


def _raw_image(seed: int, dim: bool) -> np.ndarray:
    """A normalised model input `[H, W, 3]`. Dim: pixels in [0.45, 0.7], so the normalised max stays <= 1.5 and
    the edge map skips the /255 (the original divides only when the max exceeds 1.5) while gray stays positive."""
    rng = np.random.default_rng(seed)
    image = random_texture(rng, IMAGE).astype(np.float32) / 255.0
    image[64:192, 96:160] = random_texture(rng, IMAGE)[:128, :64].astype(np.float32) / 255.0
    if dim:
        image = 0.45 + 0.25 * image
    normalised = (image - IMAGENET_MEAN) / IMAGENET_STD
    assert (normalised.max() > 1.5) != dim
    return normalised


# Every test uses these shapes, so that the jitted forward compiles once: 2 memory frames and 2 pointers.
BATCH, NUM_PTR_TOKENS = 2, 8
NUM_MEMORY = 2 * N + NUM_PTR_TOKENS


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    return (
        normal(BATCH, N, D_MODEL),
        normal(BATCH, NUM_MEMORY, MEM_DIM),
        normal(BATCH, N, D_MODEL),
        normal(BATCH, NUM_MEMORY, MEM_DIM),
    )


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, curr, memory, curr_pos, memory_pos, memory_mask, raw_image):
    return model.apply(
        {"params": params}, curr, memory, curr_pos, memory_pos, NUM_PTR_TOKENS, memory_mask, raw_image=raw_image
    )


def _torch(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def test_new_parameter_keys_and_shapes_are_the_originals(model_and_params):
    _, params = model_and_params
    state_dict = flax_to_torch(params)
    for i in range(NUM_LAYERS):
        prefix = f"layers.{i}."
        new = {
            k[len(prefix) :]: v.shape
            for k, v in state_dict.items()
            if k[len(prefix) :] in SEMA_KEY_SHAPES and k.startswith(prefix)
        }
        assert new == SEMA_KEY_SHAPES
        assert sum(int(np.prod(shape)) for shape in new.values()) == 584_194
    assert sum(int(np.prod(s)) for s in SEMA_KEY_SHAPES.values()) * NUM_LAYERS == 2_336_776


@pytest.mark.reference
@pytest.mark.parametrize("dim", [False, True], ids=["divided_by_255", "not_divided"])
def test_sema_matches_torch_reference(model_and_params, reference, dim):
    model, params = model_and_params
    curr, memory, curr_pos, memory_pos = _inputs(0)
    raw = np.stack([_raw_image(1, dim), _raw_image(2, dim)])
    all_valid = np.ones((BATCH, NUM_MEMORY), bool)

    out, maps = _forward(model, params, curr, memory, curr_pos, memory_pos, all_valid, raw)
    ref_out, ref_maps = reference(
        _torch(curr),
        _torch(memory),
        _torch(curr_pos),
        _torch(memory_pos),
        NUM_PTR_TOKENS,
        _torch(raw).permute(0, 3, 1, 2),
    )
    assert out.shape == (BATCH, N, D_MODEL) and maps.shape == (BATCH, NUM_LAYERS, IMAGE, IMAGE)
    assert max_abs_diff(out, ref_out) <= TOL
    assert max_abs_diff(maps, ref_maps) <= TOL


@pytest.mark.reference
def test_masked_fixed_capacity_memory_equals_reference_on_valid_entries(model_and_params, reference):
    """Invalid memory slots and pointers (the fixed-capacity memory bank, whose static shapes let one compiled step
    serve every frame) are invisible to both cross-attentions: the result equals the reference on the valid entries
    alone."""
    model, params = model_and_params
    curr, memory, curr_pos, memory_pos = _inputs(3)
    valid = np.stack(
        [
            np.concatenate([np.repeat([True, False], N), np.repeat([False, True], 4)]),
            np.concatenate([np.repeat([True, True], N), np.repeat([True, False], 4)]),
        ]
    )
    memory = np.where(valid[..., None], memory, 100.0)  # garbage in the invalid entries
    # the same /255 regime for both (the switch is global over the batch; the reference sees one sample at a time)
    raw = np.stack([_raw_image(4, dim=False), _raw_image(5, dim=False)])

    out, maps = _forward(model, params, curr, memory, curr_pos, memory_pos, valid, raw)
    for b in range(BATCH):
        v = valid[b]
        ref_out, ref_maps = reference(
            _torch(curr[b : b + 1]),
            _torch(memory[b : b + 1, v]),
            _torch(curr_pos[b : b + 1]),
            _torch(memory_pos[b : b + 1, v]),
            int(v[-NUM_PTR_TOKENS:].sum()),
            _torch(raw[b : b + 1]).permute(0, 3, 1, 2),
        )
        assert max_abs_diff(out[b : b + 1], ref_out) <= TOL
        assert max_abs_diff(maps[b : b + 1], ref_maps) <= TOL


@pytest.mark.reference
def test_zero_structure_strength_gives_sam2_memory_attention(model_and_params, reference):
    """With alpha = 0 the gate is 1 and the layer output is SAM 2.1's (the main branch is unchanged;
    the structure branch only feeds the gate and the returned maps)."""
    model, params = model_and_params
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if path[-1].key == "structure_strength" else x, params
    )
    curr, memory, curr_pos, memory_pos = _inputs(6)
    raw = np.stack([_raw_image(7, dim=False)] * BATCH)
    out, _ = _forward(model, params, curr, memory, curr_pos, memory_pos, np.ones((BATCH, NUM_MEMORY), bool), raw)
    seq_first = lambda x: _torch(x).transpose(0, 1)
    sam2_out = reference.sam2(
        seq_first(curr), seq_first(memory), seq_first(curr_pos), seq_first(memory_pos), NUM_PTR_TOKENS
    )
    assert max_abs_diff(out, sam2_out.transpose(0, 1)) <= TOL


def test_training_mode_uses_dropout_in_both_cross_attentions(model_and_params):
    model, params = model_and_params
    curr, memory, curr_pos, memory_pos = _inputs(8)
    raw = np.stack([_raw_image(9, dim=False)] * BATCH)

    @jax.jit
    def train_forward(rng):
        return model.apply(
            {"params": params},
            curr,
            memory,
            curr_pos,
            memory_pos,
            NUM_PTR_TOKENS,
            None,
            False,
            raw_image=raw,
            rngs={"dropout": rng},
        )

    (out_a, maps_a), (out_b, maps_b) = train_forward(jax.random.PRNGKey(0)), train_forward(jax.random.PRNGKey(1))
    assert np.all(np.isfinite(out_a)) and np.all(np.isfinite(maps_a))
    assert max_abs_diff(out_a, out_b) > 1e-3 and max_abs_diff(maps_a, maps_b) > 1e-3  # different dropout masks
