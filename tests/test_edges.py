"""Edge cues (SEMA's Canny edge map, LET's Laplacian structure target) against kornia 0.9.0 and against torch
implementations of the original's formulas (kornia <= 0.8.2's strict NMS, the structure loss's Laplacian).

NMS compares magnitudes that often tie in exact arithmetic (ramps, symmetric steps). Which pixel survives such a
tie depends on the last bit of the float computation, and that is not reproducible even within torch: its CPU
sqrt is not correctly rounded and kornia's blur takes an FMA path on large images. So every comparison skips the
"near-tie" pixels, where the reference's own NMS comparison or direction rounding is within float noise, and
checks that the pixels that do differ are rare; all other pixels must agree to 1e-5.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robotseg_jax.data.sim.textures import random_texture
from robotseg_jax.modeling.edges import (
    canny_magnitude,
    edge_map,
    laplacian_structure_target,
    to_gray,
)

torch.set_grad_enabled(False)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))
MAX_TIE_FLIP_FRACTION = 0.01

jit_canny = jax.jit(canny_magnitude, static_argnames="nms_ties")
jit_edge_map = jax.jit(edge_map, static_argnames="nms_ties")


def natural_image(seed: int, height: int, width: int) -> np.ndarray:
    """A textured `[H, W, 3]` image in [0, 1]: a VRS-Sim background texture with a second one pasted in."""
    rng = np.random.default_rng(seed)
    size = max(height, width)
    image = random_texture(rng, size)[:height, :width].astype(np.float32) / 255.0
    patch = random_texture(rng, size)[: height // 2, : width // 3].astype(np.float32) / 255.0
    image[height // 4 : height // 4 + patch.shape[0], width // 3 : width // 3 + patch.shape[1]] = patch
    return image


def synthetic_image(kind: str, height: int, width: int) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), np.float32)
    if kind == "step":
        image[:, width // 2 :] = 1.0
    elif kind == "disc_and_box":
        image[(rows - height / 2) ** 2 + (cols - width / 3) ** 2 < (height / 4) ** 2] = [0.9, 0.2, 0.1]
        image[height // 5 : 3 * height // 5, 2 * width // 3 : 5 * width // 6] = [0.1, 0.8, 0.7]
    elif kind == "ramp_and_shapes":
        image += (cols / width)[..., None] * np.array([0.3, 0.5, 0.2], np.float32)
        image[(rows - height / 2) ** 2 + (cols - width / 2) ** 2 < (height / 5) ** 2] = 0.95
    elif kind == "diagonal":
        image[rows + cols > (height + width) / 2] = 1.0
    return image


def normalise(image: np.ndarray) -> np.ndarray:
    """The model input: ImageNet normalisation (the original's EdgeMap sees this, not the 0..1 image)."""
    return (image - IMAGENET_MEAN) / IMAGENET_STD


def torch_gray(image: np.ndarray) -> torch.Tensor:
    """The original's `_safe_to_gray` in torch, for `[B, H, W, 3]` float: `[B, 1, H, W]`."""
    x = torch.from_numpy(image).permute(0, 3, 1, 2)
    if x.max() > 1.5:
        x = x / 255.0
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


def reference_gradients(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grads = kornia.filters.spatial_gradient(kornia.filters.gaussian_blur2d(gray, (5, 5), (1.0, 1.0)), normalized=False)
    return grads[:, :, 0], grads[:, :, 1]


def strict_canny_reference(gray: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The NMS magnitude of kornia <= 0.8.2's canny written out: kornia's blur and Sobel, degrees rounded to 45, and
    NMS by difference convolutions with zero padding, kept where both differences are strictly positive."""
    gx, gy = reference_gradients(gray)
    magnitude = torch.sqrt(gx * gx + gy * gy + eps)
    degrees = torch.round((180.0 * torch.atan2(gy, gx) / math.pi) / 45.0) * 45.0
    kernels = torch.zeros(8, 1, 3, 3)
    for d, (dy, dx) in enumerate(OFFSETS):
        kernels[d, 0, 1, 1] = 1.0
        kernels[d, 0, 1 + dy, 1 + dx] = -1.0
    differences = F.conv2d(magnitude, kernels, padding=1)
    along = torch.gather(differences, 1, ((degrees / 45) % 8).long())
    against = torch.gather(differences, 1, ((degrees / 45 + 4) % 8).long())
    return magnitude * (torch.minimum(along, against) > 0)


def near_ties(gray: torch.Tensor, eps: float = 1e-6) -> np.ndarray:
    """`[B, H, W]` True where the reference's NMS decision hinges on float noise.

    A last-bit difference in the blurred image (FMA or not, summation order) becomes an absolute error of about
    `noise` in gx and gy, since Sobel takes differences of blurred values. A decision is near a tie when the
    magnitude is within 2 noise of a neighbour it is compared with (under either rounding of the direction), or
    the direction is within that error of a rounding boundary.
    """
    gx, gy = reference_gradients(gray)
    noise = 64 * np.finfo(np.float32).eps * gray.abs().amax(dim=(1, 2, 3))[:, None, None]
    magnitude = torch.sqrt(gx * gx + gy * gy + eps)[:, 0]
    padded = F.pad(magnitude, (1, 1, 1, 1), value=math.sqrt(eps))
    height, width = magnitude.shape[-2:]
    neighbours = torch.stack([padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] for dy, dx in OFFSETS], -1)
    steps = torch.atan2(gy, gx)[:, 0] * (4 / math.pi)
    ambiguous = (steps - torch.floor(steps) - 0.5).abs() < (4 / math.pi) * 2 * noise / magnitude
    for direction in (torch.floor(steps), torch.ceil(steps)):
        for d in ((direction % 8).long(), ((direction + 4) % 8).long()):
            neighbour = torch.gather(neighbours, -1, d[..., None])[..., 0]
            ambiguous |= (magnitude - neighbour).abs() <= 2 * noise
    return ambiguous.numpy()


def assert_matches_off_near_ties(ours, reference, ambiguous, max_flips=MAX_TIE_FLIP_FRACTION, atol=1e-5):
    """Every pixel agrees to `atol`, except near-tie pixels, and at most `max_flips` of the pixels differ."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape
    mismatch = np.abs(ours - reference) > atol
    off_ties = np.abs(ours - reference)[~ambiguous]
    assert off_ties.max(initial=0.0) <= atol, f"max diff {off_ties.max():.3e} away from near ties"
    assert mismatch.mean() <= max_flips, f"{mismatch.mean():.4f} of the pixels differ at near ties"


# Batches of (kind, seed, max fraction of tie flips) per image size, so that each size compiles once per rule.
BATCHES = {
    (80, 144): [
        ("natural", 0, MAX_TIE_FLIP_FRACTION),
        ("natural", 1, MAX_TIE_FLIP_FRACTION),
        ("disc_and_box", 0, MAX_TIE_FLIP_FRACTION),
        ("diagonal", 0, MAX_TIE_FLIP_FRACTION),
        # A linear ramp has the same gradient everywhere, so along it NMS is decided by rounding alone (and
        # XLA's fused blur rounds differently from torch's conv2d): only the pixels off ties are compared.
        ("ramp_and_shapes", 0, 0.25),
    ],
    (64, 64): [("step", 0, MAX_TIE_FLIP_FRACTION), ("natural", 2, MAX_TIE_FLIP_FRACTION)],
    # >= 256^2 pixels: kornia's CPU blur takes its FMA path
    (260, 256): [("natural", 3, MAX_TIE_FLIP_FRACTION)],
}


def batch_gray(size: tuple[int, int], normalised: bool) -> tuple[torch.Tensor, list[float]]:
    """The gray images `[B, 1, H, W]` of one size batch, each converted on its own (the /255 switch is global
    over a batch), and their tie-flip bounds."""
    grays, bounds = [], []
    for kind, seed, max_flips in BATCHES[size]:
        image = natural_image(seed, *size) if kind == "natural" else synthetic_image(kind, *size)
        grays.append(torch_gray((normalise(image) if normalised else image)[None]))
        bounds.append(max_flips)
    return torch.cat(grays), bounds


def assert_batch_matches(ours, reference: np.ndarray, gray: torch.Tensor, bounds: list[float]) -> None:
    ambiguous = near_ties(gray)
    for i, max_flips in enumerate(bounds):
        assert_matches_off_near_ties(np.asarray(ours)[i], reference[i], ambiguous[i], max_flips)


@pytest.mark.reference
@pytest.mark.parametrize("size", list(BATCHES), ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("normalised", [False, True], ids=["unit_range", "imagenet_normalised"])
def test_opencv_ties_match_installed_kornia(size, normalised):
    """`nms_ties="opencv"` is the NMS of the kornia 0.9.0 build pinned in requirements-dev.txt."""
    gray, bounds = batch_gray(size, normalised)
    reference = kornia.filters.canny(gray, 0.1, 0.2)[0][:, 0].numpy()
    assert np.all(reference.max(axis=(1, 2)) > (1e-3 if normalised else 0.05))  # every image has edges
    assert_batch_matches(jit_canny(jnp.asarray(gray[:, 0].numpy()), nms_ties="opencv"), reference, gray, bounds)


@pytest.mark.reference
@pytest.mark.parametrize("size", list(BATCHES), ids=lambda size: f"{size[0]}x{size[1]}")
@pytest.mark.parametrize("normalised", [False, True], ids=["unit_range", "imagenet_normalised"])
def test_strict_ties_match_the_kornia_0_8_formula(size, normalised):
    gray, bounds = batch_gray(size, normalised)
    reference = strict_canny_reference(gray)[:, 0].numpy()
    assert_batch_matches(jit_canny(jnp.asarray(gray[:, 0].numpy()), nms_ties="strict"), reference, gray, bounds)


@pytest.mark.reference
def test_tie_rules_agree_on_natural_images():
    gray = jnp.asarray(batch_gray((80, 144), normalised=False)[0][:2, 0].numpy())  # the two natural images
    np.testing.assert_array_equal(jit_canny(gray, nms_ties="strict"), jit_canny(gray, nms_ties="opencv"))


@pytest.mark.reference
def test_edge_map_end_to_end_batched():
    """The whole EdgeMap on a batch of model inputs `[B, H, W, 3]`, against the original's computation in torch +
    kornia 0.9.0 (`_safe_to_gray`, the first return value of canny, float32, clamped to [0, 1])."""
    images = np.stack([normalise(natural_image(4, 64, 64)), normalise(synthetic_image("disc_and_box", 64, 64))])
    gray = torch_gray(images)
    reference = kornia.filters.canny(gray, 0.1, 0.2)[0].float().clamp(0, 1).permute(0, 2, 3, 1).numpy()
    ours = jit_edge_map(jnp.asarray(images), nms_ties="opencv")
    assert ours.shape == (2, 64, 64, 1) and ours.dtype == jnp.float32
    assert_matches_off_near_ties(ours[..., 0], reference[..., 0], near_ties(gray))


def test_gray_regime_switch_is_global_over_the_batch():
    """As in the original: one bright pixel (> 1.5) anywhere in the batch divides every image by 255."""
    dark = np.full((1, 4, 4, 3), 0.5, np.float32)
    bright = dark.copy()
    bright[0, 0, 0, 0] = 2.0
    np.testing.assert_allclose(to_gray(jnp.asarray(dark)), 0.5, rtol=1e-6)
    batch = to_gray(jnp.asarray(np.concatenate([dark, bright])))
    np.testing.assert_allclose(batch[0], 0.5 / 255.0, rtol=1e-6)
    # in the no-division regime negative (normalised) values clamp to 0 and values above 1 to 1
    clamped = to_gray(jnp.asarray(np.array([[[[-1.0, -1.0, -1.0], [1.4, 1.4, 1.4]]]], np.float32)))
    np.testing.assert_allclose(clamped, [[[0.0, 1.0]]], atol=1e-6)


def test_gray_channel_rules():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (2, 5, 6, 4)).astype(np.float32)
    rgb = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    np.testing.assert_allclose(to_gray(jnp.asarray(image)), rgb, rtol=1e-6)  # > 3 channels: the first 3
    np.testing.assert_allclose(to_gray(jnp.asarray(image[..., :1])), image[..., 0], rtol=1e-6)
    np.testing.assert_allclose(to_gray(jnp.asarray(image[..., :2])), image[..., :2].mean(-1), rtol=1e-6)
    as_uint8 = (image[..., :3] * 255).astype(np.uint8)  # integers are always divided by 255
    expected = as_uint8.astype(np.float32) / 255.0
    expected = 0.299 * expected[..., 0] + 0.587 * expected[..., 1] + 0.114 * expected[..., 2]
    np.testing.assert_allclose(to_gray(jnp.asarray(as_uint8)), expected, rtol=1e-6)


def torch_laplacian_target(mask: np.ndarray) -> np.ndarray:
    """The structure-loss target with torch conv2d: kernel of ones with -8 at the centre, /16, reflect border,
    divided by the per-sample max + 1e-6."""
    kernel = torch.ones(1, 1, 3, 3)
    kernel[0, 0, 1, 1] = -8.0
    x = F.pad(torch.from_numpy(mask)[:, None].float(), (1, 1, 1, 1), mode="reflect")
    response = (F.conv2d(x, kernel / 16.0)).abs()[:, 0]
    return (response / (response.amax(dim=(-2, -1), keepdim=True) + 1e-6)).numpy()


@pytest.mark.reference
def test_laplacian_target_matches_conv_reference():
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:48, 0:40]
    masks = np.stack(
        [
            ((rows - 20) ** 2 + (cols - 18) ** 2 < 150).astype(np.float32),
            (rng.uniform(size=(48, 40)) > 0.7).astype(np.float32),
            np.zeros((48, 40), np.float32),  # empty target: all zeros, no NaN
        ]
    )
    ours = np.asarray(jax.jit(laplacian_structure_target)(jnp.asarray(masks)))
    np.testing.assert_allclose(ours, torch_laplacian_target(masks), atol=1e-6)
    assert np.all(ours[2] == 0)
    soft = rng.uniform(size=(2, 1, 30, 50)).astype(np.float32)  # leading axes batch, soft targets allowed
    np.testing.assert_allclose(
        laplacian_structure_target(jnp.asarray(soft))[:, 0], torch_laplacian_target(soft[:, 0]), atol=1e-6
    )


def test_laplacian_of_binary_mask_is_multiple_of_one_sixteenth():
    mask = np.zeros((1, 16, 16), np.float32)
    mask[0, 4:11, 3:9] = 1.0
    mask[0, 12, 12] = 1.0
    target = np.asarray(laplacian_structure_target(jnp.asarray(mask)))
    unnormalised = target * (8.0 / 16.0 + 1e-6)  # the max response here is an isolated pixel: 8/16
    np.testing.assert_allclose(unnormalised * 16, np.round(unnormalised * 16), atol=1e-5)
