"""Boolean images [N,H,W] packed as rows of 64-bit words, for cheap whole-image shifts, ORs and pixel counts.

Pixel x of a row is bit (63 - x % 64) of word x // 64, the order of np.packbits. The padding bits past the image
width start at zero. Shifting towards larger x can push pixels into them, so a caller ANDs such a result with a
cleanly packed image before counting.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


def pack(masks: np.ndarray) -> np.ndarray:
    """bool [N,H,W] -> uint64 [N,H,ceil(W/64)]."""
    packed = np.packbits(masks, axis=-1)
    num_words = -(-masks.shape[-1] // WORD_BITS)
    padding = num_words * (WORD_BITS // 8) - packed.shape[-1]
    packed = np.pad(packed, [(0, 0)] * (packed.ndim - 1) + [(0, padding)])
    return packed.view(">u8").astype(np.uint64)


def unpack(words: np.ndarray, width: int) -> np.ndarray:
    """uint64 [N,H,num_words] -> bool [N,H,width]."""
    return np.unpackbits(words.astype(">u8").view(np.uint8), axis=-1)[..., :width].astype(bool)


def shift_columns(words: np.ndarray, k: int) -> np.ndarray:
    """The image moved by k pixels along x (k > 0: towards larger x), with zeros shifted in."""
    num_words = words.shape[-1]
    whole, bits = divmod(abs(k), WORD_BITS)
    out = np.zeros_like(words)
    if whole >= num_words:
        return out
    # Towards larger x is towards less significant bits; the carry comes from the neighbouring word.
    if k > 0:
        src = words[..., : num_words - whole]
        out[..., whole:] = src >> bits
        if bits:
            out[..., whole + 1 :] |= src[..., :-1] << (WORD_BITS - bits)
    else:
        src = words[..., whole:]
        out[..., : num_words - whole] = src << bits
        if bits:
            out[..., : num_words - whole - 1] |= src[..., 1:] >> (WORD_BITS - bits)
    return out


def column_bit(num_words: int, x: int) -> np.ndarray:
    """uint64 [num_words] with only pixel x set, to select one column of every row."""
    mask = np.zeros(num_words, np.uint64)
    mask[x // WORD_BITS] = np.uint64(1) << np.uint64(WORD_BITS - 1 - x % WORD_BITS)
    return mask


def count(words: np.ndarray) -> np.ndarray:
    """Set pixels per image: uint64 [N,H,num_words] -> int64 [N]."""
    return np.bitwise_count(words).sum(axis=(1, 2), dtype=np.int64)
