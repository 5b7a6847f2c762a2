"""The compiled model calls the video predictor makes, one jitted function per kind of call.

Shapes decide what compiles: a tracked frame with V sessions (videos) of O objects and a memory capacity compiles
once and serves every frame of that capacity (the memory bank is a fixed-capacity `MemoryInputs`; the predictor
uses a few). Prompted frames compile per click count and branch (initial conditioning frame or correction, with
or without the previous logits), as sam2's behaviour depends on them. Videos and objects are the mapped axes of
the tracking step (vmapped on accelerators, a loop inside the program on a CPU): each video brings its frame's
image features, shared by its objects, and each object its own memory selection (its own conditioning frames).
Every step takes the model's `RobotInputs` (the frame's model input, each object's category, an RPG key): a
RobotSeg model uses them, SAM 2.1 does not, so the predictor drives both models the same way. Categories are
data, so "no category" (-1) runs in the same programs.

With `devices` (several), the videos of a tracking or encoding call are split over them (`shard_map` along the
video axis; the params are replicated), when their number divides evenly: the predictor pads the batch so that it
does. Every other call runs replicated.

`compute_dtype` bfloat16 runs every program on a bfloat16 copy of the params and inputs (as sam2's examples run
under `torch.autocast(dtype=torch.bfloat16)`); outputs come back as float32. float32 is the parity reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from robotseg_jax.modeling.common import cast_floating, resize_bilinear_nchw
from robotseg_jax.modeling.config import SAM2Config
from robotseg_jax.modeling.memory_bank import MemoryInputs
from robotseg_jax.modeling.robotseg import build_model
from robotseg_jax.modeling.sam2 import BackboneFeatures, Prompts, RobotInputs, SAM2Model


@flax.struct.dataclass
class PredictorStepOutputs:
    """What the predictor keeps of `TrackOutputs`, batch first: pred_masks [B,1,h,w] low-res logits,
    obj_ptr [B,C], object_score_logits [B,1], maskmem_features [B,h',w',mem_dim] float32 or None."""

    pred_masks: jax.Array
    obj_ptr: jax.Array
    object_score_logits: jax.Array
    maskmem_features: jax.Array | None


VIDEO_AXIS = "videos"


class ModelSteps:
    """Jitted `SAM2Model` / `RobotSegModel` calls bound to one set of params (on `devices`, default: the default
    device)."""

    def __init__(
        self,
        config: SAM2Config,
        params: dict,
        compute_dtype: str = "float32",
        devices: Sequence[jax.Device] | None = None,
    ):
        self.config = config
        self.compute_dtype = jnp.dtype(compute_dtype)
        if self.compute_dtype not in (jnp.float32, jnp.bfloat16):
            raise ValueError(f"compute_dtype must be float32 or bfloat16, got {compute_dtype!r}")
        devices = list(devices or [])
        self.mesh = Mesh(np.asarray(devices), (VIDEO_AXIS,)) if len(devices) > 1 else None
        self.set_params(params)
        self._model = build_model(config)
        self._encode = jax.jit(self._encode_impl)
        self._track = jax.jit(self._track_impl)
        self._prompt = jax.jit(self._prompt_impl, static_argnames=("is_init_cond_frame",))
        self._memory = jax.jit(self._memory_impl)
        self._foreground = jax.jit(self._foreground_impl)

    def set_params(self, params: dict) -> None:
        """New weights of the same shapes (training's periodic validation): the compiled steps are reused."""
        variables = {"params": self._cast(params)}
        if self.mesh is not None:
            variables = jax.device_put(variables, NamedSharding(self.mesh, PartitionSpec()))
        self._variables = variables

    @property
    def num_devices(self) -> int:
        """How many devices a batch of videos is split over (a batch should be a multiple of it)."""
        return 1 if self.mesh is None else self.mesh.size

    def _cast(self, tree):
        """Floating leaves in the compute dtype (a no-op in float32)."""
        return cast_floating(tree, self.compute_dtype)

    @staticmethod
    def _float32(tree):
        return cast_floating(tree, jnp.float32)

    # Public calls take and return device arrays; the predictor moves results to the host.
    def encode_frames(self, images: jax.Array) -> BackboneFeatures:
        """Backbone features of normalised frames `[V, H, W, 3]` (one compiled program per V; batched on
        accelerators, one frame after another inside the program on a CPU)."""
        return self._encode(self._variables, images)

    def encode_frame(self, image: jax.Array) -> BackboneFeatures:
        """Backbone features of one normalised frame `[H, W, 3]` (batch 1)."""
        return self.encode_frames(image[None])

    def track_objects(
        self, features: BackboneFeatures, memory: MemoryInputs, robot: RobotInputs
    ) -> PredictorStepOutputs:
        """Tracks O objects in each of V videos on one frame each, without prompts; runs the memory encoder.

        `features` and `robot.image` ([V, H, W, 3]) have the videos as their batch; `memory` leaves carry leading
        [V, O] axes (each object batch 1 inside), and so do `robot.category` ([V, O, 1]) and `robot.rng` ([V, O]).
        Outputs are `[V, O, ...]`."""
        return self._track(self._variables, features, memory, robot)

    def prompt_frame(
        self,
        features: BackboneFeatures,
        memory: MemoryInputs | None,
        prompts: Prompts,
        prev_sam_mask_logits: jax.Array | None,
        is_init_cond_frame: bool,
        robot: RobotInputs,
    ) -> PredictorStepOutputs:
        """One object's prompted frame (clicks, a mask, or for RobotSeg a category alone), without the memory
        encoder (the predictor encodes memory in the propagation preflight, as sam2 does)."""
        return self._prompt(
            self._variables, features, memory, prompts, prev_sam_mask_logits, robot,
            is_init_cond_frame=is_init_cond_frame,
        )

    def encode_memory(
        self, features: BackboneFeatures, pred_masks: jax.Array, object_score_logits: jax.Array
    ) -> jax.Array:
        """sam2's `_run_memory_encoder` on a prompted frame: the low-res logits `[B,1,h,w]` upsampled to the model
        size and encoded as a mask from clicks (binarised when configured)."""
        return self._memory(self._variables, features, pred_masks, object_score_logits)

    def memory_foreground(self, pred_masks: jax.Array) -> jax.Array | None:
        """The model's `memory_foreground` of a stored frame's low-res logits `[B,1,4h,4w]` (after hole filling):
        RobotSeg's `[B,h,w]` bool foreground on the memory grid, None for SAM 2.1."""
        return self._foreground(self._variables, pred_masks)

    # ------------------------------------------------------------------ jitted bodies
    def _encode_impl(self, variables, images):
        return self._over_videos(self._encode_videos, variables, images)

    def _encode_videos(self, variables, images):
        encode = lambda x: self._model.apply(variables, self._cast(x), method=SAM2Model.forward_image)
        if len(images) == 1 or jax.default_backend() != "cpu":
            return encode(images)
        # On a CPU the frames run one at a time inside the program, as the objects do: no slower (the convolutions
        # already fill the cores), and every frame's features are bit-identical to encoding it alone.
        per_frame = jax.lax.map(lambda image: encode(image[None]), images)
        return jax.tree.map(lambda x: x[:, 0], per_frame)

    def _over_videos(self, fn, variables, *batched):
        """`fn(variables, *batched)`, with the leading (video) axis of `batched` split over the devices when there
        are several and it divides evenly."""
        num_videos = len(jax.tree.leaves(batched)[0])
        if self.mesh is None or num_videos % self.mesh.size:
            return fn(variables, *batched)
        specs = (PartitionSpec(),) + (PartitionSpec(VIDEO_AXIS),) * len(batched)
        return jax.shard_map(fn, mesh=self.mesh, in_specs=specs, out_specs=PartitionSpec(VIDEO_AXIS))(
            variables, *batched
        )

    def _track_step(self, variables, features, memory, prompts, robot, **kwargs) -> PredictorStepOutputs:
        """`track_step` of the model, reduced to what the predictor keeps."""
        inputs = self._cast((features, memory, prompts, robot, kwargs))
        out = self._model.apply(variables, *inputs[:4], method="track_step", **inputs[4])
        outputs = PredictorStepOutputs(out.pred_masks, out.obj_ptr, out.object_score_logits, out.maskmem_features)
        return self._float32(outputs)

    def _track_impl(self, variables, features, memory, robot):
        return self._over_videos(self._track_videos, variables, features, memory, robot)

    def _track_videos(self, variables, features, memory, robot):
        def one_object(video_features, image, inputs):
            object_memory, category, rng = inputs
            return self._track_step(
                variables, video_features, object_memory, Prompts(), RobotInputs(image[None], category, rng)
            )

        def one_video(inputs):
            video_features, image, video_memory, categories, rngs = inputs
            video_features = jax.tree.map(lambda x: x[None], video_features)  # batch 1, shared by the objects
            return _map_axis(lambda x: one_object(video_features, image, x), (video_memory, categories, rngs))

        per_object = _map_axis(one_video, (features, robot.image, memory, robot.category, robot.rng))
        return jax.tree.map(lambda x: x[:, :, 0], per_object)  # leaves [V, O, 1, ...] -> [V, O, ...]

    def _prompt_impl(self, variables, features, memory, prompts, prev_sam_mask_logits, robot, is_init_cond_frame):
        return self._track_step(
            variables,
            features,
            memory,
            prompts,
            robot,
            prev_sam_mask_logits=prev_sam_mask_logits,
            is_init_cond_frame=is_init_cond_frame,
            run_mem_encoder=False,
        )

    def _memory_impl(self, variables, features, pred_masks, object_score_logits):
        size = (self.config.image_size, self.config.image_size)
        high_res = resize_bilinear_nchw(pred_masks.astype(jnp.float32), size)
        inputs = self._cast((features, high_res, object_score_logits))
        return self._float32(self._model.apply(variables, *inputs, True, method=SAM2Model.encode_new_memory))

    def _foreground_impl(self, variables, pred_masks):
        # a hook: dispatch by name; the foreground thresholds the logits, so they stay float32
        return self._model.apply(variables, pred_masks, method="memory_foreground")

    def cache_sizes(self) -> dict[str, int]:
        """How many programs each call has compiled (for tests and benchmarks)."""
        return {
            "encode_frame": self._encode._cache_size(),
            "track_objects": self._track._cache_size(),
            "prompt_frame": self._prompt._cache_size(),
            "encode_memory": self._memory._cache_size(),
            "memory_foreground": self._foreground._cache_size(),
        }


def _map_axis(fn, xs):
    """`fn` over the leading axis of `xs`: a loop inside the program on a CPU, `vmap` on accelerators.

    XLA:CPU runs the objects one after another faster than batched: batched, each attention block holds every
    object's logits and no longer fits the caches (8 objects at 1024 px: 19.5 s vs 30.4 s per frame)."""
    if jax.default_backend() == "cpu":
        return jax.lax.map(fn, xs)
    return jax.vmap(fn)(xs)
