"""sam2.modeling.sam.transformer: the two-way transformer of SAM's mask decoder (TwoWayTransformer,
TwoWayAttentionBlock, Attention).

Tokens `[B, N, C]` and image tokens `[B, h*w, C]` attend to each other in turn. Unlike sam2, every attention over
the tokens takes an optional key-padding mask `token_mask: [B, N] bool` (True = real token), so that RobotSeg can
pad its variable number of extra tokens; `None` is exactly sam2's computation.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.common import MLP, Dense, layer_norm


class Attention(nn.Module):
    """Multi-head attention that projects q, k, v down to `embedding_dim // downsample_rate` channels.

    sam2's attention dropout is 0 in the mask decoder, so there is none here.
    """

    embedding_dim: int
    num_heads: int
    downsample_rate: int = 1
    kv_in_dim: int | None = None  # channels of k and v; None means embedding_dim

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        """q `[B, Nq, C]`, k and v `[B, Nk, kv_in_dim]`, key_mask `[B, Nk]` bool (False keys are ignored)."""
        internal_dim = self.embedding_dim // self.downsample_rate
        if internal_dim % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the internal dim {internal_dim}")
        kv_in_dim = self.embedding_dim if self.kv_in_dim is None else self.kv_in_dim
        if k.shape[-1] != kv_in_dim or v.shape[-1] != kv_in_dim:
            raise ValueError(f"k and v must have {kv_in_dim} channels, got {k.shape} and {v.shape}")

        def project(x: jax.Array, name: str) -> jax.Array:
            x = Dense(internal_dim, name=name)(x)
            return x.reshape(*x.shape[:-1], self.num_heads, internal_dim // self.num_heads)

        mask = None if key_mask is None else key_mask[:, None, None, :]  # broadcast over heads and queries
        values = project(v, "v_proj")
        # With bfloat16 compute, queries and keys carry float32 position encodings: attend in the values' dtype,
        # as torch autocast runs the attention matmuls in bfloat16 (a no-op in float32).
        queries, keys = project(q, "q_proj").astype(values.dtype), project(k, "k_proj").astype(values.dtype)
        out = jax.nn.dot_product_attention(queries, keys, values, mask=mask, implementation="xla")
        out = out.reshape(*out.shape[:-2], internal_dim)
        return Dense(self.embedding_dim, name="out_proj")(out)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, tokens -> image cross-attention, token MLP, image -> tokens cross-attention."""

    embedding_dim: int
    num_heads: int
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False

    @nn.compact
    def __call__(
        self,
        queries: jax.Array,
        keys: jax.Array,
        query_pe: jax.Array,
        key_pe: jax.Array,
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """queries/query_pe `[B, N, C]`, keys/key_pe `[B, h*w, C]`; returns the updated (queries, keys)."""

        def attention(name: str, downsample_rate: int) -> Attention:
            return Attention(self.embedding_dim, self.num_heads, downsample_rate=downsample_rate, name=name)

        self_attn = attention("self_attn", 1)
        if self.skip_first_layer_pe:
            # The first layer replaces the tokens by their attention output (no residual): they are their own PE.
            queries = self_attn(queries, queries, queries, key_mask=token_mask)
        else:
            q = queries + query_pe
            queries = queries + self_attn(q, q, queries, key_mask=token_mask)
        queries = layer_norm(name="norm1")(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = queries + attention("cross_attn_token_to_image", self.attention_downsample_rate)(q, k, keys)
        queries = layer_norm(name="norm2")(queries)

        mlp = MLP(self.mlp_dim, self.embedding_dim, num_layers=2, activation=nn.relu, name="mlp")
        queries = layer_norm(name="norm3")(queries + mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        image_to_token = attention("cross_attn_image_to_token", self.attention_downsample_rate)
        keys = keys + image_to_token(k, q, queries, key_mask=token_mask)
        keys = layer_norm(name="norm4")(keys)
        return queries, keys


class TwoWayTransformer(nn.Module):
    """`depth` TwoWayAttentionBlocks (`layers_i`), then a last tokens -> image attention and LayerNorm."""

    depth: int
    embedding_dim: int
    num_heads: int
    mlp_dim: int
    attention_downsample_rate: int = 2

    @nn.compact
    def __call__(
        self,
        image_embedding: jax.Array,
        image_pe: jax.Array,
        point_embedding: jax.Array,
        token_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """image_embedding `[B, h, w, C]`, image_pe `[B or 1, h, w, C]`, point_embedding `[B, N, C]`,
        token_mask `[B, N]` bool or None. Returns (tokens `[B, N, C]`, image tokens `[B, h*w, C]`)."""
        b, h, w, c = image_embedding.shape
        keys = image_embedding.reshape(b, h * w, c)
        key_pe = jnp.broadcast_to(image_pe, image_embedding.shape).reshape(b, h * w, c)
        queries = point_embedding
        for i in range(self.depth):
            block = TwoWayAttentionBlock(
                self.embedding_dim,
                self.num_heads,
                mlp_dim=self.mlp_dim,
                attention_downsample_rate=self.attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
                name=f"layers_{i}",
            )
            queries, keys = block(queries, keys, point_embedding, key_pe, token_mask=token_mask)

        final_attn = Attention(
            self.embedding_dim, self.num_heads, self.attention_downsample_rate, name="final_attn_token_to_image"
        )
        queries = queries + final_attn(queries + point_embedding, keys + key_pe, keys)
        queries = layer_norm(name="norm_final_attn")(queries)
        return queries, keys
