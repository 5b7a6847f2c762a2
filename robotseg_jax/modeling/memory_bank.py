"""Which past frames a tracked frame attends to, and the fixed-shape memory the compiled step consumes.

sam2 concatenates a variable number of memory frames and object pointers per frame, so a compiled step would
retrace whenever that number changes. Here each frame leaves a `MemoryEntry`, and the memory of a tracked frame is
packed into `MemoryInputs`: arrays of fixed capacity plus validity masks. Masked attention over the padded bank
equals attention over the concatenation of the valid entries, so every tracked frame of a capacity runs one
compiled step (the video predictor uses a few capacities, so that a frame with one memory attends over one slot).

The rules of `SAM2Base._prepare_memory_conditioned_features` live here twice, for two callers:
- `select_memory` + `pack_memory`: plain Python over frame indices, for the video predictor, whose frames and
  prompts arrive one call at a time;
- `ClipMemory`: the same rules for training (stride 1, forward in time) as array arithmetic on a slot per clip
  frame, so that the memory of a stage is a function of a traced stage index (one `lax.scan` body for all stages);
  a stage whose memory is known while tracing (unrolled) gets its selected slots only.
The tests hold the two equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.modeling.config import SAM2Config


@flax.struct.dataclass
class MemoryInputs:
    """The memory bank of one tracked frame, padded to a fixed capacity.

    maskmem_features: [S, B, h, w, mem_dim] spatial memories; slot order: conditioning frames, then previous frames
        from oldest to newest (as sam2 concatenates them).
    maskmem_tpos_index: [S] int32 row of `maskmem_tpos_enc` for each slot (num_maskmem - t_pos - 1).
    maskmem_valid: [S] bool.
    obj_ptrs: [P, B, C] object pointers.
    obj_ptr_tpos: [P] float32 temporal distance of each pointer (signed or absolute, as configured).
    obj_ptr_valid: [P] bool.
    tpos_scale: [] float32 the normaliser of the pointer distances, max(1, min(num_frames, max_ptrs) - 1).
    maskmem_foreground: [S, B, h, w] bool, each slot's predicted foreground on the memory grid (RobotSeg's RPG,
        `rpg.foreground_on_memory_grid` of the frame's stored low-res logits); None for SAM 2.1.
    """

    maskmem_features: jax.Array
    maskmem_tpos_index: jax.Array
    maskmem_valid: jax.Array
    obj_ptrs: jax.Array
    obj_ptr_tpos: jax.Array
    obj_ptr_valid: jax.Array
    tpos_scale: jax.Array
    maskmem_foreground: jax.Array | None = None


@flax.struct.dataclass
class MemoryEntry:
    """What one frame leaves for later frames: maskmem_features [B, h, w, mem_dim] (its encoded mask memory),
    obj_ptr [B, C] (its object pointer) and foreground [B, h, w] bool (RobotSeg's RPG: the frame's predicted
    foreground on the memory grid; None for SAM 2.1)."""

    maskmem_features: jax.Array
    obj_ptr: jax.Array
    foreground: jax.Array | None = None


def one_frame_memory(entry: MemoryEntry) -> MemoryInputs:
    """A memory bank holding one previous frame's entry (1 slot at temporal position 1, 1 pointer at distance 1)."""
    return MemoryInputs(
        maskmem_features=entry.maskmem_features[None],
        maskmem_tpos_index=jnp.zeros((1,), jnp.int32),
        maskmem_valid=jnp.ones((1,), bool),
        obj_ptrs=entry.obj_ptr[None],
        obj_ptr_tpos=jnp.ones((1,), jnp.float32),
        obj_ptr_valid=jnp.ones((1,), bool),
        tpos_scale=jnp.ones((), jnp.float32),
        maskmem_foreground=None if entry.foreground is None else entry.foreground[None],
    )


@dataclasses.dataclass(frozen=True)
class MemorySelection:
    """Frame indices chosen for one tracked frame: `(frame_idx, t_pos)` spatial memories, `(frame_idx, tpos)` pointers."""

    spatial: tuple[tuple[int, int], ...]
    pointers: tuple[tuple[int, int], ...]
    tpos_scale: float


def select_closest_cond_frames(frame_idx: int, cond_frames: Sequence[int], max_cond_frames: int):
    """sam2_utils.select_closest_cond_frames on frame indices: (selected, unselected), in the input order."""
    cond_frames = list(cond_frames)
    if max_cond_frames == -1 or len(cond_frames) <= max_cond_frames:
        return cond_frames, []
    if max_cond_frames < 2:
        raise ValueError("max_cond_frames_in_attn must allow at least 2 conditioning frames")
    selected = []
    before = max((t for t in cond_frames if t < frame_idx), default=None)
    if before is not None:
        selected.append(before)
    after = min((t for t in cond_frames if t >= frame_idx), default=None)
    if after is not None:
        selected.append(after)
    remaining = sorted((t for t in cond_frames if t not in selected), key=lambda t: abs(t - frame_idx))
    selected += remaining[: max_cond_frames - len(selected)]
    # sam2 builds `selected_outputs` in this order (before, after, closest), which is the memory slot order.
    unselected = [t for t in cond_frames if t not in selected]
    return selected, unselected


def select_memory(
    config: SAM2Config,
    frame_idx: int,
    cond_frames: Sequence[int],
    non_cond_frames: Sequence[int],
    num_frames: int,
    track_in_reverse: bool = False,
    training: bool = False,
) -> MemorySelection:
    """The memory frames and object pointers sam2 gathers for tracking `frame_idx` (not an initial cond frame).

    `cond_frames` must be in insertion order (sam2's dict order); `non_cond_frames` is any collection of frames
    with stored outputs.
    """
    if not cond_frames:
        raise ValueError("Tracking a frame needs at least one conditioning frame in memory")
    non_cond = set(non_cond_frames)
    selected, unselected = select_closest_cond_frames(frame_idx, cond_frames, config.max_cond_frames_in_attn)
    unselected_set = set(unselected)
    spatial = [(t, 0) for t in selected]
    stride = 1 if training else config.memory_temporal_stride_for_eval
    sign = -1 if track_in_reverse else 1
    for t_pos in range(1, config.num_maskmem):
        t_rel = config.num_maskmem - t_pos
        if t_rel == 1:
            prev = frame_idx - sign
        elif not track_in_reverse:
            prev = ((frame_idx - 2) // stride) * stride - (t_rel - 2) * stride
        else:
            prev = -(-(frame_idx + 2) // stride) * stride + (t_rel - 2) * stride
        if prev in non_cond or prev in unselected_set:
            spatial.append((prev, t_pos))

    pointers = []
    max_ptrs = min(num_frames, config.max_obj_ptrs_in_encoder)
    if config.use_obj_ptrs_in_encoder:
        if not training and config.only_obj_ptrs_in_the_past_for_eval:
            ptr_cond = [t for t in selected if (t >= frame_idx if track_in_reverse else t <= frame_idx)]
        else:
            ptr_cond = list(selected)
        for t in ptr_cond:
            dist = (frame_idx - t) * sign if config.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t)
            pointers.append((t, dist))
        for t_diff in range(1, max_ptrs):
            t = frame_idx + t_diff if track_in_reverse else frame_idx - t_diff
            if t < 0 or t >= num_frames:
                break
            if t in non_cond or t in unselected_set:
                pointers.append((t, t_diff))
    return MemorySelection(tuple(spatial), tuple(pointers), float(max(1, max_ptrs - 1)))


def memory_capacity(config: SAM2Config, max_cond_frames: int) -> tuple[int, int]:
    """(spatial slots, pointer slots) that hold any selection with at most `max_cond_frames` cond frames in memory."""
    num_cond = max_cond_frames if config.max_cond_frames_in_attn == -1 else config.max_cond_frames_in_attn
    spatial = num_cond + config.num_maskmem - 1
    pointers = num_cond + config.max_obj_ptrs_in_encoder - 1 if config.use_obj_ptrs_in_encoder else 0
    return spatial, pointers


def pack_memory(
    config: SAM2Config,
    selection: MemorySelection,
    entry_of: Callable[[int], MemoryEntry],
    capacity: tuple[int, int],
    feature_shape: tuple[int, int, int],
    dtype=jnp.float32,
) -> MemoryInputs:
    """Packs a selection into fixed-capacity `MemoryInputs`.

    `entry_of(frame)` returns that frame's `MemoryEntry` (batch B); the foreground is packed when the entries
    have one (RobotSeg). `feature_shape` is `(B, h, w)`. Works on concrete arrays and tracers.
    """
    num_slots, num_ptrs = capacity
    if len(selection.spatial) > num_slots or len(selection.pointers) > num_ptrs:
        raise ValueError(
            f"Memory selection ({len(selection.spatial)} frames, {len(selection.pointers)} pointers) exceeds the "
            f"capacity ({num_slots}, {num_ptrs}); raise the capacity (max conditioning frames)"
        )
    batch, h, w = feature_shape
    spatial = [entry_of(t) for t, _ in selection.spatial]
    feats = [e.maskmem_features.astype(dtype) for e in spatial]
    feats += [jnp.zeros((batch, h, w, config.mem_dim), dtype)] * (num_slots - len(feats))
    tpos_index = [config.num_maskmem - t_pos - 1 for _, t_pos in selection.spatial]
    tpos_index += [0] * (num_slots - len(tpos_index))
    ptrs = [entry_of(t).obj_ptr.astype(dtype) for t, _ in selection.pointers]
    ptrs += [jnp.zeros((batch, config.d_model), dtype)] * (num_ptrs - len(ptrs))
    ptr_tpos = [d for _, d in selection.pointers] + [0] * (num_ptrs - len(selection.pointers))
    foreground = None
    if spatial and spatial[0].foreground is not None:
        masks = [e.foreground.astype(bool) for e in spatial]
        foreground = jnp.stack(masks + [jnp.zeros((batch, h, w), bool)] * (num_slots - len(masks)))
    return MemoryInputs(
        maskmem_features=jnp.stack(feats) if feats else jnp.zeros((0, batch, h, w, config.mem_dim), dtype),
        maskmem_tpos_index=jnp.asarray(np.asarray(tpos_index, np.int32)),
        maskmem_valid=jnp.asarray(np.arange(num_slots) < len(selection.spatial)),
        obj_ptrs=jnp.stack(ptrs) if ptrs else jnp.zeros((0, batch, config.d_model), dtype),
        obj_ptr_tpos=jnp.asarray(np.asarray(ptr_tpos, np.float32)),
        obj_ptr_valid=jnp.asarray(np.arange(num_ptrs) < len(selection.pointers)),
        tpos_scale=jnp.asarray(selection.tpos_scale, jnp.float32),
        maskmem_foreground=foreground,
    )


@flax.struct.dataclass
class ClipMemory:
    """Every clip frame's memory entry in training, `[T, ...]` slots written as stages finish, and `select_memory`'s
    training rules as array arithmetic on them.

    entries: a `MemoryEntry` with a leading frame axis; stored / is_cond: [T] bool, whether the frame has been
    tracked and whether it is a conditioning frame.
    """

    entries: MemoryEntry
    stored: jax.Array
    is_cond: jax.Array

    @classmethod
    def empty(cls, like: MemoryEntry, num_frames: int, dtype) -> ClipMemory:
        """Zero slots for `num_frames` entries shaped like `like`; features and pointers stored in `dtype`."""
        zeros = lambda x: jnp.zeros((num_frames, *x.shape), bool if x.dtype == bool else dtype)
        return cls(
            entries=jax.tree.map(zeros, like),
            stored=jnp.zeros((num_frames,), bool),
            is_cond=jnp.zeros((num_frames,), bool),
        )

    def write(self, t, entry: MemoryEntry, is_cond: bool) -> ClipMemory:
        """Stores frame `t`'s entry (`t` may be traced)."""
        entries = jax.tree.map(lambda slots, x: slots.at[t].set(x.astype(slots.dtype)), self.entries, entry)
        return ClipMemory(entries, self.stored.at[t].set(True), self.is_cond.at[t].set(is_cond))

    def inputs_for(self, config: SAM2Config, t, present: tuple[np.ndarray, np.ndarray] | None = None) -> MemoryInputs:
        """What stage `t` attends to in training (forward tracking, stride 1), as `select_memory` with
        training=True: every conditioning frame (temporal position 0), the tracked frames t-1 .. t-(n-1)
        (n = num_maskmem) at positions n-1 .. 1, and the pointers of every conditioning frame and of the tracked
        frames t-1 .. t-(P-1) (P = min(T, max_obj_ptrs_in_encoder)) with their signed temporal distance. Slots are
        in frame order rather than sam2's concatenation order, which attention does not see (it is
        permutation-invariant over memory tokens).

        present: `(stored, is_cond)` as numpy arrays, when they and `t` are known while tracing (a stage outside a
        scan). The inputs then hold only the selected frames, so that a stage with one memory attends over one
        slot; otherwise every clip frame is a slot and the selection is a mask (`t` may be traced).
        """
        if config.max_cond_frames_in_attn != -1:
            raise NotImplementedError("training attends to every conditioning frame (max_cond_frames_in_attn=-1)")
        xp, (stored, is_cond) = (jnp, (self.stored, self.is_cond)) if present is None else (np, present)
        num_frames = self.stored.shape[0]
        max_ptrs = min(num_frames, config.max_obj_ptrs_in_encoder)
        distance = t - xp.arange(num_frames)
        tracked = stored & ~is_cond
        within = lambda n: tracked & (distance >= 1) & (distance <= n - 1)  # the n-1 previous tracked frames
        spatial_valid = (stored & is_cond) | within(config.num_maskmem)
        tpos_index = xp.clip(xp.where(is_cond, config.num_maskmem - 1, distance - 1), 0, config.num_maskmem - 1)
        entries = self.entries
        if config.use_obj_ptrs_in_encoder:
            ptr_valid = (stored & is_cond) | within(max_ptrs)
            ptr_tpos = distance if config.use_signed_tpos_enc_to_obj_ptrs else xp.abs(distance)
        else:
            entries = entries.replace(obj_ptr=entries.obj_ptr[:0])
            ptr_valid, ptr_tpos = xp.zeros((0,), bool), xp.zeros((0,), xp.int32)
        if present is not None:  # keep the selected slots only
            spatial, pointers = np.flatnonzero(spatial_valid), np.flatnonzero(ptr_valid)
            entries = MemoryEntry(
                entries.maskmem_features[spatial],
                entries.obj_ptr[pointers],
                None if entries.foreground is None else entries.foreground[spatial],
            )
            tpos_index, ptr_tpos = tpos_index[spatial], ptr_tpos[pointers]
            spatial_valid, ptr_valid = np.ones(len(spatial), bool), np.ones(len(pointers), bool)
        return MemoryInputs(
            maskmem_features=entries.maskmem_features,
            maskmem_tpos_index=jnp.asarray(tpos_index, jnp.int32),
            maskmem_valid=jnp.asarray(spatial_valid),
            obj_ptrs=entries.obj_ptr,
            obj_ptr_tpos=jnp.asarray(ptr_tpos, jnp.float32),
            obj_ptr_valid=jnp.asarray(ptr_valid),
            tpos_scale=jnp.asarray(max(1, max_ptrs - 1), jnp.float32),
            maskmem_foreground=entries.foreground,
        )
