"""Random procedural textures (numpy only) for floors, tables, walls and pedestals."""

from __future__ import annotations

import numpy as np


def random_texture(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A random uint8 [size,size,3] texture: checker, stripes, smooth noise, wood grain or speckled plain colour."""
    kind = rng.integers(5)
    colors = rng.uniform(0, 255, (2, 3))
    if kind == 0:
        weight = _checker(rng, size)
    elif kind == 1:
        weight = _stripes(rng, size)
    elif kind == 2:
        weight = _smooth_noise(rng, size, cells=int(rng.integers(2, 9)))
    elif kind == 3:
        weight = _wood(rng, size)
    else:
        weight = 0.5 + 0.15 * rng.standard_normal((size, size))
    texture = colors[0] + np.clip(weight, 0, 1)[..., None] * (colors[1] - colors[0])
    texture += rng.uniform(0, 12) * rng.standard_normal(texture.shape)  # fine grain so no surface is perfectly flat
    return np.clip(texture, 0, 255).astype(np.uint8)


def _checker(rng: np.random.Generator, size: int) -> np.ndarray:
    cell = int(rng.integers(4, size // 2))
    rows, cols = np.indices((size, size))
    return ((rows // cell + cols // cell) % 2).astype(np.float64)


def _stripes(rng: np.random.Generator, size: int) -> np.ndarray:
    # Integer periods per image side keep the pattern seamless when the renderer tiles the texture.
    rows, cols = np.indices((size, size)) / size
    turns_r, turns_c = rng.integers(0, 9, 2)
    phase = 2 * np.pi * (turns_r * rows + max(turns_c, 1) * cols)
    return 0.5 + 0.5 * np.sign(np.sin(phase)) * rng.uniform(0.5, 1.0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise: a random `cells x cells` grid, bilinearly upsampled with wrap-around so it tiles."""
    grid = rng.random((cells, cells))
    coords = np.arange(size) * cells / size
    low = np.floor(coords).astype(int)
    frac = coords - low
    high = (low + 1) % cells
    rows = grid[low] * (1 - frac)[:, None] + grid[high] * frac[:, None]
    return rows[:, low] * (1 - frac)[None] + rows[:, high] * frac[None]


def _wood(rng: np.random.Generator, size: int) -> np.ndarray:
    rows = np.indices((size, size))[0] / size
    distortion = _smooth_noise(rng, size, cells=4)
    rings = np.sin(2 * np.pi * (int(rng.integers(3, 12)) * rows + 2.0 * distortion))
    return 0.5 + 0.4 * rings
