"""RPG, RobotSeg's Robot Prompt Generator: object tokens for the mask decoder, clustered from the
memory features of each memory frame's predicted foreground.

Per memory frame: farthest-point sampling (FPS) picks 3 seeds in the foreground, one cosine K-means assignment
splits it into 3 regions; each region is split the same way into 4 sub-clusters, whose L2-normalised mean
features, concatenated, make that region's 256-d token. A frame without foreground gives 3 copies of the learned
no-memory vector.

Static shapes: every memory slot of the fixed-capacity memory (memory_bank.py) is processed, and invalid slots
come out flagged in a token mask rather than dropped. Pixel sets are boolean masks over the h x w grid, and "the
r-th pixel in row-major order" is found with a cumulative sum, so one compiled function serves any foreground.

Layout: memory features channels-last `[B, S, h, w, C]` (S memory slots), foreground `[B, S, h, w]` bool.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from robotseg_jax.modeling.common import resize_bilinear_nchw

_NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize's default, used by the original


def foreground_on_memory_grid(mask_logits: jax.Array, grid_size: tuple[int, int]) -> jax.Array:
    """RPG's `mask_fg` of one memory frame: `sigmoid(low-res mask logits)`, bilinear (no antialias)
    to the memory grid, `>= 0.5`. `[..., H, W]` -> `[..., h, w]` bool."""
    return resize_bilinear_nchw(jax.nn.sigmoid(mask_logits), grid_size) >= 0.5


def l2_normalize(x: jax.Array) -> jax.Array:
    """`F.normalize(x, dim=-1)`: x / max(||x||, 1e-12)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _NORMALIZE_EPS)


def pixel_of_rank(member: jax.Array, rank: jax.Array) -> jax.Array:
    """Index of the `rank`-th True entry of `member` `[N]` (row-major order); 0 when there is none."""
    return jnp.argmax(member & (jnp.cumsum(member) - 1 == rank))


def farthest_point_seeds(member: jax.Array, coords: jax.Array, num_seeds: int, start: jax.Array) -> jax.Array:
    """Greedy FPS over the pixels in `member` `[N]` (coords `[N, 2]` int32, squared Euclidean distance), from
    pixel index `start`: each next seed is the first member farthest from all seeds so far. Returns `[num_seeds]`
    pixel indices; with fewer members than seeds the missing ones repeat seed 0, as OnePassKMeans pads them.
    """
    outside = jnp.int32(-1)  # below every member's distance, so argmax never picks a non-member

    def next_seed(carry, _):
        dist, last = carry
        d = jnp.sum((coords - coords[last]) ** 2, axis=-1)
        dist = jnp.where(member, jnp.minimum(dist, d), outside)
        seed = jnp.argmax(dist)  # the first index on ties, like torch.argmax
        return (dist, seed), seed

    init = (jnp.where(member, jnp.iinfo(jnp.int32).max, outside), start)
    _, rest = jax.lax.scan(next_seed, init, None, length=num_seeds - 1)
    seeds = jnp.concatenate([start[None], rest])
    return jnp.where(jnp.arange(num_seeds) < jnp.sum(member), seeds, start)


def one_pass_kmeans(features: jax.Array, member: jax.Array, seeds: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One cosine K-means assignment of the pixels in `member` `[N]` to the centers `features[seeds]`.

    Each pixel goes to the center of smallest `1 - cos`, the first one on ties, so a duplicated seed loses to its
    earlier copy (made explicit here rather than left to bit-identical matmul columns). Returns the cluster masks
    `[k, N]` bool and the prototypes `[k, C]`: the mean feature of each cluster, or its center if it is empty.
    The assignment carries no gradient; the prototypes are differentiable in `features`, as in the original.
    """
    num_clusters = seeds.shape[0]
    centers = features[seeds]
    distance = 1.0 - l2_normalize(features) @ l2_normalize(centers).T  # [N, k]
    order = jnp.arange(num_clusters)
    duplicate = jnp.any((seeds[:, None] == seeds[None, :]) & (order[:, None] > order[None, :]), axis=1)
    assignment = jnp.argmin(jnp.where(duplicate[None, :], jnp.inf, distance), axis=-1)
    clusters = (assignment[None, :] == order[:, None]) & member[None, :]  # [k, N]
    counts = jnp.sum(clusters, axis=1, keepdims=True)
    means = (clusters.astype(features.dtype) @ features) / jnp.maximum(counts, 1)
    return clusters, jnp.where(counts > 0, means, centers)


class RobotPromptGenerator(nn.Module):
    """RPG: `object_token_num` tokens per memory frame, plus the learned no-memory vector (torch name
    `no_memory_prompt_embeddings_fg`, an nn.Embedding(1, embed_dim)).

    The FPS start of each clustering is the r-th pixel (row-major) of its pixel set, r drawn uniformly from a
    JAX PRNG key (the original uses torch.randint on the device RNG, unseeded) or injected as
    `start_ranks`. Per memory frame there are 1 + object_token_num draws, in the original's order: the macro
    level, then the micro level of regions 0, 1, 2.
    """

    embed_dim: int = 256
    object_token_num: int = 3
    num_sub_clusters: int = 4  # hard-coded in the original; num_sub_clusters * mem_dim must equal embed_dim

    def setup(self) -> None:
        # PyTorch's nn.Embedding initialises N(0, 1), as the original's `no_memory_prompt_embeddings_fg`.
        self.no_memory_prompt_embeddings_fg = nn.Embed(1, self.embed_dim, embedding_init=nn.initializers.normal(1.0))

    @property
    def draws_per_frame(self) -> int:
        return 1 + self.object_token_num

    def no_memory_tokens(self, batch_size: int) -> jax.Array:
        """The tokens without any memory (the original's `memory is None` branch): `[B, K, embed_dim]` copies."""
        token = self.no_memory_prompt_embeddings_fg.embedding[0]
        return jnp.broadcast_to(token, (batch_size, self.object_token_num, self.embed_dim))

    def __call__(
        self,
        memory_features: jax.Array,
        foreground: jax.Array,
        slot_valid: jax.Array,
        rng: jax.Array | None = None,
        start_ranks: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Object tokens of every memory slot.

        Args:
          memory_features: `[B, S, h, w, C]` memory features (without positional encoding).
          foreground: `[B, S, h, w]` bool, each slot's predicted foreground (see `foreground_on_memory_grid`).
          slot_valid: `[B, S]` bool, the slots that hold a memory frame.
          rng: PRNG key for the FPS starts; or
          start_ranks: `[B, S, 1 + K]` int, injected FPS starts, taken modulo the size of each pixel set.

        Returns:
          tokens `[B, S * K, embed_dim]` (slot by slot, K tokens each) and their validity `[B, S * K]` bool.
        """
        batch, slots, height, width, channels = memory_features.shape
        if self.num_sub_clusters * channels != self.embed_dim:
            raise ValueError(
                f"{self.num_sub_clusters} sub-clusters of {channels}-d features do not make a {self.embed_dim}-d token"
            )
        if (rng is None) == (start_ranks is None):
            raise ValueError("pass exactly one of rng and start_ranks")
        if rng is not None:
            draws = jax.random.split(rng, (batch, slots, self.draws_per_frame))
            pick = lambda draw, count: jax.random.randint(draw, (), 0, jnp.maximum(count, 1))
        else:
            draws = start_ranks
            pick = lambda rank, count: jnp.mod(rank, jnp.maximum(count, 1))

        rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
        coords = jnp.stack([rows.ravel(), cols.ravel()], axis=-1).astype(jnp.int32)  # (y, x), row-major
        no_memory = self.no_memory_prompt_embeddings_fg.embedding[0]

        def frame_tokens(features, fg, frame_draws):
            def seeds_in(member, draw, num_seeds):
                start = pixel_of_rank(member, pick(draw, jnp.sum(member)))
                return farthest_point_seeds(member, coords, num_seeds, start)

            regions, _ = one_pass_kmeans(features, fg, seeds_in(fg, frame_draws[0], self.object_token_num))
            tokens = []
            for r in range(self.object_token_num):
                region = jnp.where(jnp.any(regions[r]), regions[r], fg)  # an empty region falls back to all of fg
                _, prototypes = one_pass_kmeans(
                    features, region, seeds_in(region, frame_draws[1 + r], self.num_sub_clusters)
                )
                tokens.append(l2_normalize(prototypes).reshape(-1))  # sub-prototypes normalised one by one
            tokens = jnp.stack(tokens)
            return jnp.where(jnp.any(fg), tokens, no_memory)

        features = memory_features.astype(jnp.float32).reshape(batch, slots, height * width, channels)
        tokens = jax.vmap(jax.vmap(frame_tokens))(features, foreground.reshape(batch, slots, -1), draws)
        tokens = tokens.reshape(batch, slots * self.object_token_num, self.embed_dim)
        return tokens, jnp.repeat(slot_valid, self.object_token_num, axis=1)
