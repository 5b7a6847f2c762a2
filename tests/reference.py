"""The PyTorch reference (PyPI `sam2` 1.1.0) with random weights, and its conversion by the project's converter."""

from __future__ import annotations

import numpy as np
import torch

from robotseg_jax.checkpoints.torch_keys import torch_to_flax
from robotseg_jax.modeling.config import REFERENCE_YAML

torch.set_grad_enabled(False)


def perturb_(module: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> torch.nn.Module:
    """Adds N(0, scale) noise to every parameter and buffer-free weight, so that zero- or constant-initialised
    tensors (biases, CXBlock gamma = 1e-6, no_obj_embed_spatial, ...) take part in the comparison."""
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module


def build_reference(model_name: str = "sam2.1_hiera_t", image_size: int = 256, seed: int = 0, overrides=()):
    """sam2's SAM2Base on the CPU in eval mode, with random (perturbed) weights and a reduced image size."""
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    extra = [f"++model.image_size={image_size}", *overrides]
    model = build_sam2(REFERENCE_YAML[model_name], ckpt_path=None, device="cpu", mode="eval", hydra_overrides_extra=extra)
    return perturb_(model, seed)


def save_official_checkpoint(model: torch.nn.Module, path) -> None:
    """Writes a reference model's weights as Meta releases them: `{"model": state_dict}` in a `.pt` file."""
    from robotseg_jax.checkpoints.convert import save_torch_state_dict

    save_torch_state_dict({k: v.numpy() for k, v in model.state_dict().items()}, path)


def to_flax(torch_module: torch.nn.Module, params_template, prefix: str = "") -> dict:
    """Converts a reference module's state_dict with the project's converter."""
    return torch_to_flax(torch_module.state_dict(), params_template, prefix=prefix)


def nchw_to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def nhwc_to_nchw(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).contiguous()


def max_abs_diff(a, b) -> float:
    a = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
