"""Temporal smoothing of the person probability: steadier edges, no ghost behind fast motion.

    smooth = TemporalSmoother(0.5)
    for prob in probs:              # (h, w) float32 p(person) at the working size, in frame order
        prob = smooth(prob)

A plain moving average m_t = p_t + (m_{t-1} - p_t)·r ghosts: a hand that moved away leaves a fading
copy. Here the memory is weighted by how unsure the model is about each pixel *now*:

    m_t = p_t + (m_{t-1} - p_t) · u(p_t) · r,    u(p) = 4·p·(1 - p)

u is 1 at p = 0.5 (the flickering edge pixels) and 0 at p ∈ {0, 1}: where the model is sure, the new
frame wins at once, so a person moving onto or off a pixel is followed without lag. r in [0, 1] is
the strength (0: off).

That alone still lags at a moving edge: there the new p is ~0.5 (u ~1) while the old m was 0 or 1,
so the edge is held back ~1 working-size pixel per frame (IoU 0.97 -> 0.92 on a square moving 4 px
per frame). Jitter changes p a little, motion a lot, so the memory is also faded by the size of the
change, g(d) = max(0, 1 - d / τ), d = |m_{t-1} - p_t|:

    m_t = p_t + (m_{t-1} - p_t) · u(p_t) · r · g(|m_{t-1} - p_t|)     (τ = 0.5; τ = None: no g)

On that square it keeps the IoU within 0.003 of the raw mask at any speed, with the same flicker
reduction as the plain form (tests/test_temporal.py measures both).
"""

from __future__ import annotations

import numpy as np


def uncertainty(p: np.ndarray) -> np.ndarray:
    """u(p) = 4·p·(1 − p): 1 at p = 0.5, 0 at p = 0 and p = 1."""
    return 4 * p * (1 - p)


class TemporalSmoother:
    """Uncertainty-weighted recursive smoothing of probability maps, one call per frame in order.

        smooth = TemporalSmoother(strength=0.7)           # motion=0.5: the motion gate g (see above)
        m = smooth(p)     # p (h, w) float in [0, 1] -> m (h, w) float32, a new array

    The first frame, and any frame whose size differs from the last, passes through unchanged.
    Not thread-safe: it carries the previous frame's result. reset() forgets it (a new shot).
    """

    def __init__(self, strength: float = 0.5, *, motion: float | None = 0.5) -> None:
        if not 0 <= strength <= 1:
            raise ValueError(f"smoothing strength must be in 0..1, got {strength}")
        if motion is not None and not motion > 0:
            raise ValueError(f"motion threshold must be > 0 (or None), got {motion}")
        self.strength = float(strength)
        self.motion = motion     # τ: a change this big in p is motion, not jitter, and is not smoothed
        self._prev: np.ndarray | None = None

    def __call__(self, prob: np.ndarray) -> np.ndarray:
        p = np.asarray(prob, dtype=np.float32)
        prev = self._prev
        if prev is None or prev.shape != p.shape or self.strength == 0:
            m = p.copy()
        else:
            diff = prev - p
            w = uncertainty(p)
            w *= np.float32(self.strength)
            if self.motion is not None:
                w *= np.clip(1 - np.abs(diff) / np.float32(self.motion), 0, 1)
            m = diff * w
            m += p
        self._prev = m
        return m.copy()

    def reset(self) -> None:
        self._prev = None
