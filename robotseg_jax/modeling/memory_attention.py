"""SAM 2.1's memory attention (sam2/modeling/memory_attention.py) with axial RoPE attention, over a masked memory.

The memory is a fixed-capacity sequence so that one compiled step serves every video frame:
`[num_slots * N spatial tokens (one memory frame of N = h*w tokens per slot) | num_obj_ptr_tokens pointer tokens]`
plus an optional `[B, M]` validity mask. Invalid keys get no attention weight, so the result equals sam2's result
on the concatenation of the valid frames and pointers alone: attention is invariant to the order of keys, and
every spatial slot carries the same RoPE (sam2 repeats the current frame's frequencies per memory frame).

Layout: batch-first tokens `[B, N, C]` (sam2's MemoryAttention takes and returns seq-first `[N, B, C]`).
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.modeling.attention import dot_product_attention
from robotseg_jax.modeling.common import Dense, layer_norm
from robotseg_jax.modeling.dropout import Dropout


@functools.lru_cache(maxsize=16)
def compute_axial_cis(dim: int, end_x: int, end_y: int, theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """sam2's `compute_axial_cis` as real arrays: (cos, sin), each `[end_x * end_y, dim // 2]`, float32.

    Token t sits at (x, y) = (t % end_x, t // end_x); the first dim // 4 frequencies rotate by x, the rest by y.
    Read-only: the result is cached.
    """
    freqs = np.float32(1.0) / (
        np.float32(theta) ** (np.arange(0, dim, 4)[: dim // 4].astype(np.float32) / np.float32(dim))
    )
    t = np.arange(end_x * end_y)
    t_x, t_y = (t % end_x).astype(np.float32), (t // end_x).astype(np.float32)
    angles = np.concatenate([np.outer(t_x, freqs), np.outer(t_y, freqs)], axis=-1)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    cos.flags.writeable = sin.flags.writeable = False
    return cos, sin


def apply_rotary_enc(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates channel pairs (2i, 2i+1) of `x` `[..., T, D]` as the complex numbers x_2i + i x_2i+1 times
    cos + i sin (`[T, D // 2]`), computed in float32 like sam2's `apply_rotary_enc`."""
    pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = jnp.stack([real * cos - imag * sin, real * sin + imag * cos], axis=-1)
    return rotated.reshape(x.shape).astype(x.dtype)


class RoPEAttention(nn.Module):
    """sam2's RoPEAttention: q/k/v projections, axial RoPE on queries and keys, softmax attention, out_proj.

    Queries form a square grid (h = w = sqrt(N_q)), as sam2 assumes. With `rope_k_repeat` the keys may be several
    such grids, each rotated like the queries. The last `num_k_exclude_rope` keys (object pointers) are not
    rotated. `key_mask` `[B, N_k]` (True = valid) removes keys from the softmax; a query with no valid key outputs
    `out_proj`'s bias instead of NaN.
    """

    embedding_dim: int = 256
    num_heads: int = 1
    dropout: float = 0.1  # on the attention probabilities, in training only
    rope_theta: float = 10000.0
    rope_k_repeat: bool = False
    kv_in_dim: int | None = None  # channels of k and v (64 for the memory); None means embedding_dim

    @nn.compact
    def __call__(
        self,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        num_k_exclude_rope: int = 0,
        key_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide embedding_dim {self.embedding_dim}")
        kv_in_dim = self.embedding_dim if self.kv_in_dim is None else self.kv_in_dim
        if k.shape[-1] != kv_in_dim or v.shape[-1] != kv_in_dim:
            raise ValueError(f"k and v must have {kv_in_dim} channels, got {k.shape} and {v.shape}")
        head_dim = self.embedding_dim // self.num_heads
        q = self._separate_heads(Dense(self.embedding_dim, name="q_proj")(q))
        k = self._separate_heads(Dense(self.embedding_dim, name="k_proj")(k))
        v = self._separate_heads(Dense(self.embedding_dim, name="v_proj")(v))

        num_q = q.shape[-2]
        side = math.isqrt(num_q)
        if side * side != num_q:
            raise ValueError(f"RoPE needs a square grid of queries, got {num_q} tokens")
        cos, sin = compute_axial_cis(head_dim, side, side, self.rope_theta)
        q = apply_rotary_enc(q, cos, sin)
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        if num_k_rope > 0:
            repeats, remainder = divmod(num_k_rope, num_q)
            if remainder or (repeats != 1 and not self.rope_k_repeat):
                raise ValueError(
                    f"{num_k_rope} rotated keys for {num_q} queries (rope_k_repeat={self.rope_k_repeat})"
                )
            k_rope = apply_rotary_enc(k[..., :num_k_rope, :], np.tile(cos, (repeats, 1)), np.tile(sin, (repeats, 1)))
            k = jnp.concatenate([k_rope, k[..., num_k_rope:, :]], axis=-2)

        dropout = None
        if not deterministic and self.dropout > 0:
            dropout = lambda probs: Dropout(self.dropout)(probs, deterministic=False)
        out = dot_product_attention(q, k, v, key_mask, dropout)
        return Dense(self.embedding_dim, name="out_proj")(self._recombine_heads(out))

    def _separate_heads(self, x: jax.Array) -> jax.Array:
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(0, 2, 1, 3)

    @staticmethod
    def _recombine_heads(x: jax.Array) -> jax.Array:
        batch, heads, tokens, head_dim = x.shape
        return x.transpose(0, 2, 1, 3).reshape(batch, tokens, heads * head_dim)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm layer: RoPE self-attention, RoPE cross-attention to the memory, ReLU MLP, each residual.

    The three blocks are separate methods and `main_branch` returns both the post-cross-attention tokens and the
    layer output, so that a subclass (RobotSeg's SEMA layer) can add modules in `setup` (after `super().setup()`)
    and a second branch in `__call__` without repeating this one.
    """

    d_model: int = 256
    dim_feedforward: int = 2048
    dropout: float = 0.1
    kv_in_dim: int = 64
    rope_theta: float = 10000.0
    pos_enc_at_attn: bool = False
    pos_enc_at_cross_attn_keys: bool = True
    pos_enc_at_cross_attn_queries: bool = False

    def setup(self) -> None:
        attention = functools.partial(
            RoPEAttention, self.d_model, num_heads=1, dropout=self.dropout, rope_theta=self.rope_theta
        )
        self.self_attn = attention()
        self.cross_attn_image = attention(rope_k_repeat=True, kv_in_dim=self.kv_in_dim)
        self.linear1 = Dense(self.dim_feedforward)
        self.linear2 = Dense(self.d_model)
        self.norm1, self.norm2, self.norm3 = layer_norm(1e-5), layer_norm(1e-5), layer_norm(1e-5)
        self.ffn_dropout = Dropout(self.dropout)  # torch's `dropout` (no params; that name holds the rate here)
        self.dropout1 = Dropout(self.dropout)
        self.dropout2 = Dropout(self.dropout)
        self.dropout3 = Dropout(self.dropout)

    def self_attention_block(self, tgt: jax.Array, query_pos: jax.Array, deterministic: bool) -> jax.Array:
        x = self.norm1(tgt)
        q = k = x + query_pos if self.pos_enc_at_attn else x
        return tgt + self.dropout1(self.self_attn(q, k, x, deterministic=deterministic), deterministic)

    def cross_attention_block(
        self,
        tgt: jax.Array,
        memory: jax.Array,
        query_pos: jax.Array,
        memory_pos: jax.Array,
        num_k_exclude_rope: int,
        memory_mask: jax.Array | None,
        deterministic: bool,
    ) -> jax.Array:
        x = self.norm2(tgt)
        attended = self.cross_attn_image(
            x + query_pos if self.pos_enc_at_cross_attn_queries else x,
            memory + memory_pos if self.pos_enc_at_cross_attn_keys else memory,
            memory,
            num_k_exclude_rope=num_k_exclude_rope,
            key_mask=memory_mask,
            deterministic=deterministic,
        )
        return tgt + self.dropout2(attended, deterministic)

    def feed_forward_block(self, tgt: jax.Array, deterministic: bool) -> jax.Array:
        hidden = self.ffn_dropout(nn.relu(self.linear1(self.norm3(tgt))), deterministic)
        return tgt + self.dropout3(self.linear2(hidden), deterministic)

    def main_branch(
        self,
        tgt: jax.Array,
        memory: jax.Array,
        query_pos: jax.Array,
        memory_pos: jax.Array,
        num_k_exclude_rope: int = 0,
        memory_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array]:
        """sam2's layer: returns (tokens after cross-attention, layer output after the MLP)."""
        t1 = self.self_attention_block(tgt, query_pos, deterministic)
        t2 = self.cross_attention_block(
            t1, memory, query_pos, memory_pos, num_k_exclude_rope, memory_mask, deterministic
        )
        return t2, self.feed_forward_block(t2, deterministic)

    def __call__(
        self,
        tgt: jax.Array,
        memory: jax.Array,
        query_pos: jax.Array,
        memory_pos: jax.Array,
        num_k_exclude_rope: int = 0,
        memory_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        return self.main_branch(tgt, memory, query_pos, memory_pos, num_k_exclude_rope, memory_mask, deterministic)[1]


class MemoryAttention(nn.Module):
    """Conditions the current frame's tokens on the memory bank: `layers_i` MemoryAttentionLayers, final `norm`.

    `make_layer` is the hook for a subclass that swaps in an extended layer class.
    """

    d_model: int = 256
    num_layers: int = 4
    dim_feedforward: int = 2048
    dropout: float = 0.1
    kv_in_dim: int = 64  # mem_dim
    rope_theta: float = 10000.0
    pos_enc_at_input: bool = True

    def setup(self) -> None:
        self.layers = [self.make_layer() for _ in range(self.num_layers)]  # Flax names them layers_0, layers_1, ...
        self.norm = layer_norm(1e-5)

    def make_layer(self) -> MemoryAttentionLayer:
        return MemoryAttentionLayer(
            self.d_model,
            self.dim_feedforward,
            dropout=self.dropout,
            kv_in_dim=self.kv_in_dim,
            rope_theta=self.rope_theta,
        )

    def __call__(
        self,
        curr: jax.Array,
        memory: jax.Array,
        curr_pos: jax.Array,
        memory_pos: jax.Array,
        num_obj_ptr_tokens: int,
        memory_mask: jax.Array | None = None,
        deterministic: bool = True,
    ) -> jax.Array:
        """`curr`/`curr_pos` [B, N, d_model] on a square grid; `memory`/`memory_pos` [B, M, mem_dim] whose last
        `num_obj_ptr_tokens` (static) are object pointers and the rest whole memory frames of N tokens;
        `memory_mask` [B, M] bool marks the valid keys (None: all valid). Returns [B, N, d_model]."""
        output = curr + 0.1 * curr_pos if self.pos_enc_at_input else curr
        for layer in self.layers:
            output = layer(output, memory, curr_pos, memory_pos, num_obj_ptr_tokens, memory_mask, deterministic)
        return self.norm(output)
