"""GenEval's spatial-relation rule, shared by the GenEval rule reward and the ThinkGen-Nano scorers.

GenEval (evaluation/evaluate_images.py, ``relative_position`` with POSITION_THRESHOLD = 0.1): centre offset
A - B, shrunk per axis by 0.1 x (width_a + width_b) (resp. heights), clipped at 0 with the sign kept; no relation
if both shrunk offsets are ~0. The shrunk offset divided by the norm of the raw offset must exceed 0.5 on an axis
for that relation (y grows downwards, so "above" is a negative dy).
"""
from __future__ import annotations

import math

POSITION_THRESHOLD = 0.1


def relative_position(box_a, box_b) -> set[str]:
    """Relations of A relative to B ({"left of", "right of", "above", "below"}, possibly empty); boxes are
    (x0, y0, x1, y1)."""
    ax1, ay1, ax2, ay2 = box_a
    bx1, by1, bx2, by2 = box_b
    off = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2, (ay1 + ay2) / 2 - (by1 + by2) / 2)
    size = (abs(ax2 - ax1) + abs(bx2 - bx1), abs(ay2 - ay1) + abs(by2 - by1))
    shrunk = [math.copysign(max(abs(o) - POSITION_THRESHOLD * s, 0.0), o) for o, s in zip(off, size)]
    if all(abs(v) < 1e-3 for v in shrunk):
        return set()
    norm = math.hypot(*off)
    dx, dy = shrunk[0] / norm, shrunk[1] / norm
    rel = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel
