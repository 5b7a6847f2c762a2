"""sam2 1.1.0's `SAM2VideoPredictor` API on the JAX model.

The bookkeeping follows sam2's predictor rule for rule (conditioning vs tracked frames, temporary outputs of
prompted frames that the propagation preflight encodes into memory, correction clicks fed with the previous
low-res logits, consolidation across objects), so the same calls give the same masks. What differs is where
things live and how they run:

- Frames are decoded and resized on demand (video_io.py) and image features are cached for a few frames only;
  every per-frame output is kept on the host as numpy, so device memory stays flat however long the video is.
- All objects are tracked in one compiled step, mapped over objects, each with its own fixed-capacity memory
  (model_steps.py); sam2 loops over objects. Results equal tracking each object alone. The capacity is the
  smallest of a few sizes that holds the frame's memories, so a filling memory costs what it holds.
- Outputs are numpy arrays `[O, 1, H, W]` of logits at the video resolution.

Every step gets the model's `RobotInputs` (the frame's model input, a category per object, -1 here: none, and
an RPG key split from the session's) and every stored frame the model's `memory_foreground`, so the same
predictor runs SAM 2.1 and RobotSeg (SEMA, RPG, class token) without asking which it has: SAM 2.1 ignores the
inputs and keeps no foreground. `RobotSegVideoPredictor` (robotseg_predictor.py) adds RobotSeg's category API.
"""

from __future__ import annotations

import dataclasses
import operator
import secrets
import zlib
from collections.abc import Hashable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from robotseg_jax.constants import BOX_CORNER_LABELS, POINT_LABELS, PROMPT_LOGITS_CLAMP
from robotseg_jax.inference.model_steps import ModelSteps, PredictorStepOutputs
from robotseg_jax.inference.postprocess import (
    fill_holes_in_mask_scores,
    to_video_resolution,
)
from robotseg_jax.inference.video_io import open_video
from robotseg_jax.inference.video_state import FrameOutput, InferenceState, ObjectState
from robotseg_jax.modeling.config import SAM2Config
from robotseg_jax.modeling.memory_bank import (
    MemoryInputs,
    memory_capacity,
    pack_memory,
    select_memory,
)
from robotseg_jax.modeling.sam2 import NO_OBJ_SCORE, BackboneFeatures, Prompts, RobotInputs

# RobotSeg's category of an object that has none: the decoder then runs without class and object tokens.
NO_CATEGORY = -1


# Tokens per memory slot from which `memory_buckets` is on by default: 32 x 32 (image_size 512; 4096 at 1024,
# where frame 1 took 4.2 s over 7 slots and 2.2 s over 1 on the 2-core CPU, against about 2 s per extra compile).
MIN_BUCKETED_SLOT_TOKENS = 1024


class VideoPredictor:
    """Interactive video segmentation with sam2's `SAM2VideoPredictor` API.

    fill_hole_area: background holes of at most this many pixels in the low-res masks become foreground (sam2's
        predictor builds with 8; 0 turns it off).
    non_overlap_masks: keep only the highest-scoring object per output pixel.
    add_all_frames_to_correct_as_cond: corrected frames join the conditioning frames (sam2's option).
    memory_dtype: how memory features are stored; sam2 stores bfloat16, float32 keeps full precision
        (`init_state(memory_dtype=...)` overrides it per session).
    feature_cache_size / frame_cache_size: how many frames' image features (device) and decoded frames (host)
        are kept.
    seed: the seed of every session's random draws (RobotSeg's RPG farthest-point-sampling starts): None draws a
        fresh one per session, as the unseeded original; an int makes every session reproducible.
    compute_dtype: "float32" (the parity reference) or "bfloat16" (the model runs on a bfloat16 copy of the
        params, as sam2 under `torch.autocast(dtype=torch.bfloat16)`; outputs are float32).
    memory_buckets: pack a tracked frame's memory into the fewest of 1, 2, 4 or all slots that hold it (one
        compiled program each) rather than always all. None: on when a memory slot holds at least
        `MIN_BUCKETED_SLOT_TOKENS` tokens (image_size >= 512), where attending over empty slots costs more than
        compiling three more programs; off below, as in tests and training's validation at small sizes.
    """

    # Whether `add_new_mask` outputs are kept through propagation rather than re-tracked (RobotSeg's rule).
    freeze_mask_outputs = False

    def __init__(
        self,
        config: SAM2Config,
        params: dict,
        fill_hole_area: int = 8,
        non_overlap_masks: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
        memory_dtype=jnp.bfloat16,
        feature_cache_size: int = 4,
        frame_cache_size: int = 2,
        seed: int | None = None,
        compute_dtype: str = "float32",
        memory_buckets: bool | None = None,
        devices: Sequence[jax.Device] | None = None,
    ):
        self.config = config
        self.image_size = config.image_size
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        self.feature_cache_size = max(1, feature_cache_size)
        self.frame_cache_size = frame_cache_size
        self.memory_dtype = jnp.dtype(memory_dtype)
        self.seed = seed
        self.steps = ModelSteps(config, params, compute_dtype, devices)
        if memory_buckets is None:
            memory_buckets = config.image_embedding_size**2 >= MIN_BUCKETED_SLOT_TOKENS
        self.memory_buckets = memory_buckets

    def set_params(self, params: dict) -> None:
        """Swaps in new weights of the same shapes without recompiling (for validation during training). Open
        inference states keep features computed with the old weights: start new ones."""
        self.steps.set_params(params)

    # ------------------------------------------------------------------ session
    def init_state(
        self,
        video_path,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
        memory_dtype=None,
    ) -> InferenceState:
        """A session on a folder of JPEG frames, an .mp4 file or a uint8 array `[T, H, W, 3]`.

        The three flags are accepted for sam2 compatibility; what they ask for is always the case here: frames are
        decoded on demand (nothing to load ahead) and frames and outputs live on the host. `memory_dtype`
        overrides the predictor's for this session (the compiled programs do not depend on it).
        """
        del offload_video_to_cpu, offload_state_to_cpu, async_loading_frames
        frames = open_video(video_path, self.image_size, self.frame_cache_size)
        state = InferenceState(frames, self.memory_dtype if memory_dtype is None else jnp.dtype(memory_dtype))
        state.rng = self.session_key()
        self._image_features(state, 0)  # as sam2: fail early and warm up the encoder on the first frame
        return state

    def session_key(self) -> jax.Array:
        """The PRNG key a new session splits its model draws from (RobotSeg's RPG): from `seed`, or fresh."""
        return jax.random.key(secrets.randbits(32) if self.seed is None else self.seed)

    def reset_state(self, state: InferenceState) -> None:
        """Removes every object, prompt and output (the video and its cached features stay)."""
        state.obj_ids.clear()
        state.objects.clear()

    # ------------------------------------------------------------------ prompts
    def add_new_points_or_box(
        self,
        state: InferenceState,
        frame_idx: int,
        obj_id: Hashable,
        points=None,
        labels=None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box=None,
    ) -> tuple[int, list, np.ndarray]:
        """Clicks `points` [N, 2] (x, y) with `labels` [N] (1 foreground, 0 background) and/or a `box`
        (x0, y0, x1, y1) on a frame; in video pixels, or in [0, 1] with `normalize_coords=False`.

        On a frame the object was not tracked on, this starts from the prompts alone (a conditioning frame); on a
        tracked frame it corrects the tracked mask, feeding its logits with the clicks. Returns
        (frame_idx, obj_ids, logits [O, 1, H, W]) for every object on that frame.
        """
        return self._add_points_or_box(
            state, frame_idx, obj_id, points, labels, clear_old_points, normalize_coords, box, NO_CATEGORY
        )

    def _add_points_or_box(
        self,
        state: InferenceState,
        frame_idx: int,
        obj_id: Hashable,
        points,
        labels,
        clear_old_points: bool,
        normalize_coords: bool,
        box,
        category: int,
    ) -> tuple[int, list, np.ndarray]:
        """`add_new_points_or_box` for an object of `category` (RobotSeg's class-token row, or NO_CATEGORY)."""
        frame_idx = self._check_frame(state, frame_idx)
        coords, point_labels = self._point_prompts(state, points, labels, box, clear_old_points, normalize_coords)
        obj = self._object(state, obj_id, create=True)
        if not clear_old_points and frame_idx in obj.point_inputs:
            old_coords, old_labels = obj.point_inputs[frame_idx]
            coords = np.concatenate([old_coords, coords], axis=1)
            point_labels = np.concatenate([old_labels, point_labels], axis=1)
        obj.point_inputs[frame_idx] = (coords, point_labels)
        obj.mask_inputs.pop(frame_idx, None)

        is_init_cond_frame = frame_idx not in obj.frames_tracked
        reverse = obj.frames_tracked.get(frame_idx, False)
        is_cond = is_init_cond_frame or self.add_all_frames_to_correct_as_cond
        prev_out = obj.latest_output(frame_idx, is_cond)
        prev_logits = None
        if prev_out is not None:
            # sam2 clamps the logits it feeds back with correction clicks ("rare numerical issues")
            prev_logits = np.clip(prev_out.pred_masks, -PROMPT_LOGITS_CLAMP, PROMPT_LOGITS_CLAMP)
        prompts = Prompts(jnp.asarray(coords), jnp.asarray(point_labels))
        out = self._run_prompted_frame(
            state, obj, frame_idx, is_init_cond_frame, reverse, prompts, prev_logits, category
        )
        obj.temp_outputs(is_cond)[frame_idx] = out
        return frame_idx, list(state.obj_ids), self._consolidated_output(state, frame_idx, is_cond)

    def add_new_mask(
        self, state: InferenceState, frame_idx: int, obj_id: Hashable, mask
    ) -> tuple[int, list, np.ndarray]:
        """A binary mask `[H', W']` (any size; resized to the model size) as the object's mask on a frame."""
        frame_idx = self._check_frame(state, frame_idx)
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
        obj = self._object(state, obj_id, create=True)
        mask_inputs = jnp.asarray(mask.astype(bool), jnp.float32)[None]
        if mask.shape != (self.image_size, self.image_size):
            # sam2: antialiased bilinear resize, then re-binarised at 0.5
            size = (1, self.image_size, self.image_size)
            mask_inputs = (jax.image.resize(mask_inputs, size, "linear", antialias=True) >= 0.5).astype(jnp.float32)
        obj.mask_inputs[frame_idx] = np.asarray(mask_inputs)
        obj.point_inputs.pop(frame_idx, None)

        is_init_cond_frame = frame_idx not in obj.frames_tracked
        reverse = obj.frames_tracked.get(frame_idx, False)
        is_cond = is_init_cond_frame or self.add_all_frames_to_correct_as_cond
        prompts = Prompts(mask_inputs=mask_inputs)
        out = self._run_prompted_frame(state, obj, frame_idx, is_init_cond_frame, reverse, prompts, None)
        out.frozen = self.freeze_mask_outputs
        obj.temp_outputs(is_cond)[frame_idx] = out
        return frame_idx, list(state.obj_ids), self._consolidated_output(state, frame_idx, is_cond)

    def clear_all_prompts_in_frame(
        self, state: InferenceState, frame_idx: int, obj_id: Hashable, need_output: bool = True
    ) -> tuple[int, list, np.ndarray] | None:
        """Removes an object's prompts on a frame; its conditioning output there becomes a tracked one.

        Unlike sam2, which silently adds an unknown `obj_id` as a new (prompt-less) object, an unknown id is an error.
        """
        frame_idx = self._check_frame(state, frame_idx)
        obj = self._object(state, obj_id, create=False)
        obj.point_inputs.pop(frame_idx, None)
        obj.mask_inputs.pop(frame_idx, None)
        obj.temp_cond_outputs.pop(frame_idx, None)
        obj.temp_non_cond_outputs.pop(frame_idx, None)
        out = obj.cond_outputs.pop(frame_idx, None)
        if out is not None:
            obj.non_cond_outputs[frame_idx] = out
            obj.frames_tracked.pop(frame_idx, None)
        if not need_output:
            return None
        is_cond = any(frame_idx in o.temp_cond_outputs for o in state.objects)
        return frame_idx, list(state.obj_ids), self._consolidated_output(state, frame_idx, is_cond)

    def remove_object(
        self, state: InferenceState, obj_id: Hashable, strict: bool = False, need_output: bool = True
    ) -> tuple[list, list[tuple[int, np.ndarray]]]:
        """Removes an object; returns the remaining ids and the updated outputs on the frames it was prompted on."""
        if obj_id not in state.obj_ids:
            if not strict:
                return list(state.obj_ids), []
            raise ValueError(f"Cannot remove object id {obj_id!r}: no such object (existing ids: {state.obj_ids})")
        if len(state.obj_ids) == 1:
            self.reset_state(state)
            return [], []
        obj_idx = state.obj_ids.index(obj_id)
        obj = state.objects[obj_idx]
        input_frames = sorted(set(obj.point_inputs) | set(obj.mask_inputs))
        for frame_idx in input_frames:
            self.clear_all_prompts_in_frame(state, frame_idx, obj_id, need_output=False)
        del state.obj_ids[obj_idx]
        del state.objects[obj_idx]
        updated = []
        if need_output:
            for frame_idx in input_frames:
                is_cond = any(frame_idx in o.temp_cond_outputs for o in state.objects)
                updated.append((frame_idx, self._consolidated_output(state, frame_idx, is_cond)))
        return list(state.obj_ids), updated

    # ------------------------------------------------------------------ propagation
    def propagate_in_video_preflight(self, state: InferenceState) -> None:
        """Moves the prompted frames' outputs into memory, encoding their memory features (sam2's preflight)."""
        if not state.objects:
            raise RuntimeError("No points or masks were added for any object; add prompts before propagating")
        for obj_id, obj in zip(state.obj_ids, state.objects):
            for is_cond in (False, True):
                temp, outputs = obj.temp_outputs(is_cond), obj.outputs(is_cond)
                for frame_idx, out in temp.items():
                    if out.maskmem_features is None:
                        out.maskmem_features = self._encode_prompted_memory(state, frame_idx, out)
                    outputs[frame_idx] = out
                temp.clear()
            if not obj.cond_outputs:
                raise RuntimeError(f"No points or masks were added for object id {obj_id!r}; add prompts first")
            for frame_idx in obj.cond_outputs:
                obj.non_cond_outputs.pop(frame_idx, None)

    def propagate_in_video(
        self,
        state: InferenceState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list, np.ndarray]]:
        """Tracks every object through the video; yields (frame_idx, obj_ids, logits [O, 1, H, W]) per frame.

        Starts at the earliest conditioning frame unless `start_frame_idx` is given and visits
        `max_frame_num_to_track` frames after it (sam2's count: the start frame plus that many, within the video).
        """
        return self._propagate(state, start_frame_idx, max_frame_num_to_track, reverse, NO_CATEGORY)

    def _propagate(
        self,
        state: InferenceState,
        start_frame_idx: int | None,
        max_frame_num_to_track: int | None,
        reverse: bool,
        category: int,
    ) -> Iterator[tuple[int, list, np.ndarray]]:
        self.propagate_in_video_preflight(state)
        num_frames = state.num_frames
        if start_frame_idx is None:
            start_frame_idx = min(t for obj in state.objects for t in obj.cond_outputs)
        start_frame_idx = self._check_frame(state, start_frame_idx)
        if max_frame_num_to_track is None:
            max_frame_num_to_track = num_frames
        if reverse:
            end_frame_idx = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end_frame_idx - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            end_frame_idx = min(start_frame_idx + max_frame_num_to_track, num_frames - 1)
            order = range(start_frame_idx, end_frame_idx + 1)

        for frame_idx in order:
            categories = [category] * len(state.objects)
            (logits,) = self.track_frames([SessionFrame(state, frame_idx, categories, reverse)])
            yield frame_idx, list(state.obj_ids), logits

    def track_frames(
        self, frames: Sequence[SessionFrame], pad_sessions_to: int | None = None
    ) -> list[np.ndarray]:
        """One propagation step of several sessions at once: each session's objects are tracked on its frame in one
        compiled call (batched over sessions and objects), and the outputs are stored as `propagate_in_video`
        stores them (conditioning and frozen outputs are kept, not re-tracked). Returns each session's logits
        `[O, 1, H, W]` at its video resolution.

        Every session must have been prompted and preflighted (`propagate_in_video_preflight`), hold the same
        number of objects and store memory in the same dtype; a session appears at most once. `pad_sessions_to`
        pads the batch with repeats of the last session (their outputs are dropped), so that a shrinking batch
        keeps the compiled program. A session's results equal its own `propagate_in_video` (the same draws; the
        float reduction order may differ).
        """
        if not frames:
            return []
        num_objects = {len(f.state.objects) for f in frames}
        if len(num_objects) != 1 or 0 in num_objects:
            raise ValueError(f"every session must hold the same number (> 0) of objects, got {sorted(num_objects)}")
        if len({f.state.memory_dtype for f in frames}) != 1:
            raise ValueError("the sessions store memory in different dtypes")
        if len({id(f.state) for f in frames}) != len(frames):
            raise ValueError("a session can advance by one frame per call")
        if pad_sessions_to is not None and pad_sessions_to < len(frames):
            raise ValueError(f"pad_sessions_to={pad_sessions_to} is smaller than the {len(frames)} sessions")
        frames = [f.checked(self) for f in frames]
        to_track = [[i for i, obj in enumerate(f.state.objects) if not _keeps_output(obj, f.frame_idx)] for f in frames]
        if any(to_track):
            tracked = self._track_sessions(frames, pad_sessions_to)
            for f, outputs, indices in zip(frames, tracked, to_track):
                for i in indices:
                    f.state.objects[i].non_cond_outputs[f.frame_idx] = self._frame_output(outputs, i)
        results = []
        for f in frames:
            for obj in f.state.objects:
                obj.frames_tracked[f.frame_idx] = f.reverse
            logits = np.concatenate([obj.memory_output(f.frame_idx).pred_masks for obj in f.state.objects])
            results.append(self._video_resolution(f.state, logits))
        return results

    def forget_old_outputs(self, state: InferenceState, frame_idx: int, reverse: bool = False) -> None:
        """Drops the tracked outputs that tracking on from `frame_idx` (forward, or backward with `reverse`) can no
        longer attend to, so that a long propagation keeps the host memory of a few frames per object. The memory
        reaches back `num_maskmem - 1` strided frames and `max_obj_ptrs_in_encoder - 1` pointers; conditioning
        outputs always stay. Frames dropped cannot be corrected later (their outputs are gone)."""
        cfg = self.config
        reach = max(1 + (cfg.num_maskmem - 2) * cfg.memory_temporal_stride_for_eval, cfg.max_obj_ptrs_in_encoder - 1)
        for obj in state.objects:
            old = [t for t in obj.non_cond_outputs if (t - frame_idx if reverse else frame_idx - t) > reach]
            for t in old:
                del obj.non_cond_outputs[t]

    # ------------------------------------------------------------------ internals
    def _check_frame(self, state: InferenceState, frame_idx) -> int:
        frame_idx = operator.index(frame_idx)
        if not 0 <= frame_idx < state.num_frames:
            raise IndexError(f"frame_idx {frame_idx} is out of range: the video has {state.num_frames} frames")
        return frame_idx

    def _object(self, state: InferenceState, obj_id: Hashable, create: bool) -> ObjectState:
        if obj_id in state.obj_ids:
            return state.objects[state.obj_ids.index(obj_id)]
        if not create:
            raise ValueError(f"Unknown object id {obj_id!r} (existing ids: {state.obj_ids})")
        state.obj_ids.append(obj_id)
        state.objects.append(ObjectState(rng=object_key(state.rng, obj_id)))
        return state.objects[-1]

    def _point_prompts(self, state, points, labels, box, clear_old_points, normalize_coords):
        """Validated clicks in model-input pixels: coords [1, N, 2] float32, labels [1, N] int32 (box first)."""
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is None and box is None:
            raise ValueError("give points (with labels) or a box")
        coords = np.zeros((1, 0, 2), np.float32) if points is None else np.asarray(points, np.float32)
        point_labels = np.zeros((1, 0), np.int32) if labels is None else np.asarray(labels, np.int32)
        coords = coords[None] if coords.ndim == 2 else coords
        point_labels = point_labels[None] if point_labels.ndim == 1 else point_labels
        if coords.ndim != 3 or coords.shape[0] != 1 or coords.shape[2] != 2:
            raise ValueError(f"points must be [N, 2] (x, y), got shape {np.shape(points)}")
        if point_labels.shape != coords.shape[:2]:
            raise ValueError(f"labels must be [N] for {coords.shape[1]} points, got shape {np.shape(labels)}")
        bad = set(np.unique(point_labels).tolist()) - set(POINT_LABELS)
        if bad:
            raise ValueError(f"labels must be 1 (foreground) or 0 (background) (2/3: box corners), got {sorted(bad)}")
        if box is not None:
            if not clear_old_points:
                # sam2: a box must come before any click, so it cannot be added to earlier clicks
                raise ValueError("a box cannot be added to old points; use clear_old_points=True")
            box = np.asarray(box, np.float32)
            if box.size != 4:
                raise ValueError(f"box must be (x0, y0, x1, y1), got shape {box.shape}")
            coords = np.concatenate([box.reshape(1, 2, 2), coords], axis=1)
            point_labels = np.concatenate([np.asarray([BOX_CORNER_LABELS], np.int32), point_labels], axis=1)
        width, height = (state.video_width, state.video_height) if normalize_coords else (1.0, 1.0)
        outside = (coords < 0).any(-1) | (coords[..., 0] > width) | (coords[..., 1] > height)
        if outside.any():
            x, y = coords[outside][0]
            where = f"the {width}x{height} frame" if normalize_coords else "[0, 1] (normalize_coords=False)"
            raise ValueError(f"prompt ({x:g}, {y:g}) lies outside {where}")
        if normalize_coords:
            coords = coords / np.asarray([width, height], np.float32)
        return coords * np.float32(self.image_size), point_labels

    def _frame_inputs(self, state: InferenceState, frame_idx: int) -> tuple[jax.Array, BackboneFeatures]:
        """The frame's model input `[1, H, W, 3]` on the device and its image features, cached together."""
        return self._frames_inputs([(state, frame_idx)])[0]

    def _frames_inputs(
        self, frames: Sequence[tuple[InferenceState, int]], encode_batch: int | None = None
    ) -> list[tuple[jax.Array, BackboneFeatures]]:
        """`_frame_inputs` of several sessions' frames; the frames not cached are encoded in one call, of
        `encode_batch` frames when given (padded with repeats, so that fewer frames reuse the compiled program)."""
        missing = [(state, frame_idx) for state, frame_idx in frames if frame_idx not in state.cached_features]
        if missing:
            images = [jnp.asarray(state.frames[frame_idx]) for state, frame_idx in missing]
            images += images[-1:] * max(0, (encode_batch or 0) - len(images))
            batch = jnp.stack(images)
            features = self.steps.encode_frames(batch)
            for i, (state, frame_idx) in enumerate(missing):
                one = jax.tree.map(lambda x: x[i : i + 1], features) if len(images) > 1 else features
                state.cached_features[frame_idx] = (batch[i : i + 1], one)
                if len(state.cached_features) > self.feature_cache_size:
                    state.cached_features.popitem(last=False)
        inputs = []
        for state, frame_idx in frames:
            state.cached_features.move_to_end(frame_idx)
            inputs.append(state.cached_features[frame_idx])
        return inputs

    def _image_features(self, state: InferenceState, frame_idx: int) -> BackboneFeatures:
        return self._frame_inputs(state, frame_idx)[1]

    @staticmethod
    def _robot_keys(objects: Sequence[ObjectState]) -> jax.Array:
        """One draw of each object's key, `[O]` (RobotSeg's RPG farthest-point-sampling starts)."""
        keys = []
        for obj in objects:
            obj.rng, key = jax.random.split(obj.rng)
            keys.append(key)
        return jnp.stack(keys)

    def _memories(self, requests: Sequence[tuple[InferenceState, ObjectState, int, bool]]) -> list[MemoryInputs]:
        """Each (session, object, frame, reverse)'s memory for tracking the frame (batch 1), chosen by sam2's rules
        and packed to one capacity for all of them.

        Pointer slots hold the most conditioning frames any object has, rounded up to a power of two, so adding
        conditioning frames rarely changes the compiled shapes. With `memory_buckets`, spatial slots are the
        smallest of a few sizes (powers of two, then the full bank) that holds every object's selection: a frame
        with one memory attends over one slot, not seven, at the price of one compiled program per size.
        """
        most_cond = max([len(obj.cond_outputs) for _, obj, _, _ in requests] + [1])
        full_slots, pointer_slots = memory_capacity(self.config, 1 << (most_cond - 1).bit_length())
        selections = [
            select_memory(
                self.config, frame_idx, list(obj.cond_outputs), obj.non_cond_outputs.keys(), state.num_frames, reverse
            )
            for state, obj, frame_idx, reverse in requests
        ]
        needed = max(len(selection.spatial) for selection in selections)
        spatial_slots = min(1 << max(needed - 1, 0).bit_length(), full_slots) if self.memory_buckets else full_slots
        capacity = (spatial_slots, pointer_slots)
        emb = self.config.image_embedding_size
        return [
            pack_memory(self.config, selection, lambda t, obj=obj: obj.memory_output(t).memory_entry(), capacity,
                        (1, emb, emb))
            for (_, obj, _, _), selection in zip(requests, selections)
        ]

    def _run_prompted_frame(
        self,
        state: InferenceState,
        obj: ObjectState,
        frame_idx: int,
        is_init_cond_frame: bool,
        reverse: bool,
        prompts: Prompts,
        prev_logits: np.ndarray | None,
        category: int = NO_CATEGORY,
    ) -> FrameOutput:
        mask_as_output = prompts.mask_inputs is not None and self.config.use_mask_input_as_output_without_sam
        memory = None
        if not (is_init_cond_frame or mask_as_output):
            (memory,) = self._memories([(state, obj, frame_idx, reverse)])
        prev = None if prev_logits is None else jnp.asarray(prev_logits)
        image, features = self._frame_inputs(state, frame_idx)
        # one object: batch 1, one key
        robot = RobotInputs(image, jnp.asarray([category], jnp.int32), self._robot_keys([obj])[0])
        out = self.steps.prompt_frame(features, memory, prompts, prev, is_init_cond_frame, robot)
        return self._frame_output(self._to_host(state, out), 0)

    def _track_sessions(
        self, frames: Sequence[SessionFrame], pad_sessions_to: int | None
    ) -> list[PredictorStepOutputs]:
        """Host outputs `[O, ...]` of every session's objects tracked on its frame, in one `track_objects` call."""
        per_device = self.steps.num_devices
        batch = -(-(pad_sessions_to or len(frames)) // per_device) * per_device  # a multiple of the devices
        padded = list(frames) + [frames[-1]] * (batch - len(frames))
        inputs = self._frames_inputs([(f.state, f.frame_idx) for f in frames], encode_batch=batch)
        inputs += inputs[-1:] * (len(padded) - len(frames))
        memories = self._memories([(f.state, obj, f.frame_idx, f.reverse) for f in frames for obj in f.state.objects])
        num_objects = len(frames[0].state.objects)
        memories += memories[-num_objects:] * (len(padded) - len(frames))  # the padding repeats the last session
        # one stack of every (session, object) memory, viewed as leaves [V, O, ...]
        memory = jax.tree.map(lambda *xs: jnp.stack(xs).reshape(len(padded), num_objects, *xs[0].shape), *memories)
        keys = [self._robot_keys(f.state.objects) for f in frames]
        keys += keys[-1:] * (len(padded) - len(frames))
        concat = lambda *xs: xs[0] if len(xs) == 1 else jnp.concatenate(xs)
        images, features = jax.tree.map(concat, *inputs)
        categories = jnp.asarray([list(f.categories) for f in padded], jnp.int32)[..., None]
        robot = RobotInputs(images, categories, jnp.stack(keys))
        outputs = self._to_host(frames[0].state, self.steps.track_objects(features, memory, robot))
        return [jax.tree.map(lambda x, v=v: x[v], outputs) for v in range(len(frames))]

    def _to_host(self, state: InferenceState, outputs: PredictorStepOutputs) -> PredictorStepOutputs:
        """Step outputs as numpy, memory features cast to the session's storage dtype on the device first."""
        if outputs.maskmem_features is not None:
            outputs = outputs.replace(maskmem_features=outputs.maskmem_features.astype(state.memory_dtype))
        return jax.device_get(outputs)

    def _frame_output(self, outputs: PredictorStepOutputs, index: int) -> FrameOutput:
        """Object `index` of host step outputs, with sam2's hole filling on the stored low-res logits."""
        pred_masks = np.asarray(outputs.pred_masks[index : index + 1], np.float32)
        if self.fill_hole_area > 0:
            pred_masks = fill_holes_in_mask_scores(pred_masks, self.fill_hole_area)
        maskmem = outputs.maskmem_features
        # of the stored (hole-filled) logits, as the original's RPG reads them; None for SAM 2.1
        foreground = jax.device_get(self.steps.memory_foreground(jnp.asarray(pred_masks)))
        return FrameOutput(
            pred_masks=pred_masks,
            obj_ptr=np.asarray(outputs.obj_ptr[index : index + 1]),
            object_score_logits=np.asarray(outputs.object_score_logits[index : index + 1]),
            maskmem_features=None if maskmem is None else np.asarray(maskmem[index : index + 1]),
            memory_foreground=foreground,
        )

    def _encode_prompted_memory(self, state: InferenceState, frame_idx: int, out: FrameOutput) -> np.ndarray:
        features = self._image_features(state, frame_idx)
        maskmem = self.steps.encode_memory(
            features, jnp.asarray(out.pred_masks), jnp.asarray(out.object_score_logits)
        )
        return np.asarray(jax.device_get(maskmem.astype(state.memory_dtype)))

    def _consolidated_output(self, state: InferenceState, frame_idx: int, is_cond: bool) -> np.ndarray:
        """Every object's newest logits on a frame at video resolution; objects without one get NO_OBJ_SCORE."""
        low_res = self.image_size // 4
        logits = np.full((len(state.objects), 1, low_res, low_res), NO_OBJ_SCORE, np.float32)
        for i, obj in enumerate(state.objects):
            out = obj.latest_output(frame_idx, is_cond)
            if out is not None:
                logits[i] = out.pred_masks[0]
        return self._video_resolution(state, logits)

    def _video_resolution(self, state: InferenceState, logits: np.ndarray) -> np.ndarray:
        video_size = (state.video_height, state.video_width)
        return np.asarray(to_video_resolution(jnp.asarray(logits), video_size, self.non_overlap_masks))


@dataclasses.dataclass(frozen=True)
class SessionFrame:
    """A frame of a session to track (`VideoPredictor.track_frames`): every object of `state` on `frame_idx`,
    object i as category `categories[i]` (RobotSeg's class-token row; NO_CATEGORY for none, and for SAM 2.1),
    tracking backward in time when `reverse`."""

    state: InferenceState
    frame_idx: int
    categories: Sequence[int]
    reverse: bool = False

    def checked(self, predictor: VideoPredictor) -> SessionFrame:
        if len(self.categories) != len(self.state.objects):
            raise ValueError(f"{len(self.categories)} categories for {len(self.state.objects)} objects")
        if any(not obj.cond_outputs for obj in self.state.objects):
            raise RuntimeError("every object needs a prompted frame in memory: run propagate_in_video_preflight")
        return dataclasses.replace(self, frame_idx=predictor._check_frame(self.state, self.frame_idx))


def object_key(session_key: jax.Array, obj_id: Hashable) -> jax.Array:
    """An object's PRNG key: the session key folded with the object id (an int as it is, other ids by a stable
    hash of their repr), so that the same id draws the same numbers in any session of the same seed."""
    tag = obj_id if isinstance(obj_id, int) and not isinstance(obj_id, bool) else zlib.crc32(repr(obj_id).encode())
    return jax.random.fold_in(session_key, tag & 0xFFFFFFFF)


def _keeps_output(obj: ObjectState, frame_idx: int) -> bool:
    """Whether propagation re-uses the object's stored output on a frame: a conditioning output, or a frozen one."""
    out = obj.non_cond_outputs.get(frame_idx)
    return frame_idx in obj.cond_outputs or (out is not None and out.frozen)
