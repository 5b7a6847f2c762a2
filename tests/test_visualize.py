"""Mask overlays: fixed colours per object, tinted interiors, solid outlines, untouched background."""

from __future__ import annotations

import numpy as np
import pytest

from robotseg_jax.inference.visualize import PALETTE, object_colour, overlay


def test_overlay_tints_interior_outlines_boundary_and_keeps_background():
    frame = np.full((8, 10, 3), 100, np.uint8)
    mask = np.zeros((8, 10), bool)
    mask[2:6, 3:8] = True
    out = overlay(frame, {1: mask})
    colour = PALETTE[0].astype(np.float32)
    assert out.dtype == np.uint8 and out.shape == frame.shape
    assert np.array_equal(out[~mask], frame[~mask])
    assert np.array_equal(out[2, 3], PALETTE[0])  # boundary pixel: solid colour
    assert np.array_equal(out[3, 4], np.round(0.5 * 100 + 0.5 * colour).astype(np.uint8))  # interior: blended


def test_colours_are_fixed_per_object_id():
    assert np.array_equal(object_colour(1), PALETTE[0])
    assert np.array_equal(object_colour(2), PALETTE[1])
    assert np.array_equal(object_colour(1 + len(PALETTE)), PALETTE[0])
    frame = np.zeros((4, 4, 3), np.uint8)
    one = np.ones((4, 4), bool)
    assert np.array_equal(overlay(frame, {3: one})[0, 0], PALETTE[2])


def test_overlay_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="uint8"):
        overlay(np.zeros((4, 4, 3), np.float32), {})
    with pytest.raises(ValueError, match="object 2"):
        overlay(np.zeros((4, 4, 3), np.uint8), {2: np.zeros((3, 4), bool)})
