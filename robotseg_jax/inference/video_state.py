"""The state of a video session: per object, its prompts and outputs on each frame, kept on the host.

The layout is sam2's `inference_state`: conditioning outputs (prompted frames), tracked outputs, temporary outputs
of frames prompted since the last propagation (their memory is encoded by the propagation preflight), and the
frames tracked with their direction. Dict order is insertion order, as in sam2, where it orders the memory.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Hashable

import jax
import numpy as np

from robotseg_jax.inference.video_io import VideoFrames
from robotseg_jax.modeling.memory_bank import MemoryEntry
from robotseg_jax.modeling.sam2 import BackboneFeatures


@dataclasses.dataclass
class FrameOutput:
    """One object's output on one frame, on the host (sam2's compact `current_out`).

    pred_masks: [1, 1, h, w] float32 low-res logits after hole filling; obj_ptr: [1, C] float32;
    object_score_logits: [1, 1] float32; maskmem_features: [1, h', w', mem_dim] in the memory dtype, or None for a
    prompted frame until the propagation preflight encodes it.
    memory_foreground: [1, h', w'] bool, RobotSeg's foreground of pred_masks on the memory grid (RPG clusters it);
    None for SAM 2.1. frozen marks an `add_new_mask` output of RobotSeg's predictor, which propagation re-uses
    rather than re-tracks.
    """

    pred_masks: np.ndarray
    obj_ptr: np.ndarray
    object_score_logits: np.ndarray
    maskmem_features: np.ndarray | None
    memory_foreground: np.ndarray | None = None
    frozen: bool = False

    def memory_entry(self) -> MemoryEntry:
        """What this output contributes to later frames' memory (after the preflight encoded it)."""
        if self.maskmem_features is None:
            raise RuntimeError("this frame's memory has not been encoded yet (propagate_in_video_preflight does it)")
        return MemoryEntry(self.maskmem_features, self.obj_ptr, self.memory_foreground)


@dataclasses.dataclass
class ObjectState:
    """Prompts and outputs of one object. Dict order is insertion order, as in sam2 (it orders the memory)."""

    point_inputs: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    mask_inputs: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    cond_outputs: dict[int, FrameOutput] = dataclasses.field(default_factory=dict)
    non_cond_outputs: dict[int, FrameOutput] = dataclasses.field(default_factory=dict)
    temp_cond_outputs: dict[int, FrameOutput] = dataclasses.field(default_factory=dict)
    temp_non_cond_outputs: dict[int, FrameOutput] = dataclasses.field(default_factory=dict)
    frames_tracked: dict[int, bool] = dataclasses.field(default_factory=dict)  # frame -> tracked in reverse
    # The key this object's model draws (RobotSeg's RPG) are split from, one split per call: derived from the
    # session key and the object id only, so an object's masks do not depend on the other objects of the session.
    rng: jax.Array | None = None

    def outputs(self, is_cond: bool) -> dict[int, FrameOutput]:
        return self.cond_outputs if is_cond else self.non_cond_outputs

    def temp_outputs(self, is_cond: bool) -> dict[int, FrameOutput]:
        return self.temp_cond_outputs if is_cond else self.temp_non_cond_outputs

    def latest_output(self, frame_idx: int, is_cond: bool) -> FrameOutput | None:
        """The newest output on a frame: a temporary one first, then a conditioning one, then a tracked one."""
        for outputs in (self.temp_outputs(is_cond), self.cond_outputs, self.non_cond_outputs):
            if frame_idx in outputs:
                return outputs[frame_idx]
        return None

    def memory_output(self, frame_idx: int) -> FrameOutput:
        """The stored output a memory slot or pointer refers to (cond and tracked outputs never share a frame)."""
        return self.cond_outputs[frame_idx] if frame_idx in self.cond_outputs else self.non_cond_outputs[frame_idx]


@dataclasses.dataclass
class InferenceState:
    """A video session: the lazily decoded frames, the objects and their outputs, a small cache of frames on the
    device with their image features, the dtype memory features are stored in, and the session's PRNG key, from
    which each object's key is derived (RobotSeg's RPG draws)."""

    frames: VideoFrames
    memory_dtype: np.dtype
    obj_ids: list[Hashable] = dataclasses.field(default_factory=list)
    objects: list[ObjectState] = dataclasses.field(default_factory=list)
    cached_features: collections.OrderedDict[int, tuple[jax.Array, BackboneFeatures]] = dataclasses.field(
        default_factory=collections.OrderedDict
    )
    rng: jax.Array | None = None

    @property
    def num_frames(self) -> int:
        return self.frames.num_frames

    @property
    def video_height(self) -> int:
        return self.frames.height

    @property
    def video_width(self) -> int:
        return self.frames.width
