"""AUP, d3LLM's *Accuracy Under Parallelism* of a speed/quality curve (Qian et al., "d3LLM",
hao-ai-lab/d3LLM ``AUP_leaderboard/aup_utils.py`` and the AUP blog post).

With the points ``(rho_i, y_i)`` sorted by tokens per forward ``rho`` and ``y`` the accuracy in
percent, ``y_min = y_1 - drop`` (``y_1``: the accuracy of the least parallel point) and only
points with ``y_i >= y_min`` kept,

    AUP = rho_1 y_1 + 1/2 sum_{i>=2} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})),
    W(y) = min(exp(-alpha (1 - y / y_max)), 1),

``alpha = 3`` and ``y_max`` the best accuracy of any decode on the task (an AR baseline's
included). d3LLM uses ``drop = 5`` points. An AR decoder's own AUP is ``1 x y_AR``. (The
reference code also asserts that the least and most parallel points are within 5 points; we
filter, as the paper's definition does, instead of refusing the curve.)
"""

import math


def aup(points: list[tuple[float, float]], y_max: float | None = None, *, alpha: float = 3.0,
        drop: float = 5.0) -> float:
    """AUP of ``(tokens per forward, accuracy in %)`` points (module docstring); ``y_max``
    defaults to the best accuracy among ``points``."""
    if not points or any(rho <= 0 for rho, _ in points):
        raise ValueError(f"aup: expected points with tokens per forward > 0, got {points!r}")
    pts = sorted(points, key=lambda p: p[0])
    y_max = max(y for _, y in pts) if y_max is None else y_max
    if y_max <= 0:
        return 0.0  # every accuracy is 0: no area

    def weight(y):
        return min(math.exp(-alpha * (1 - y / y_max)), 1.0)

    kept = [(rho, y) for rho, y in pts if y >= pts[0][1] - drop]
    total = kept[0][0] * kept[0][1]
    for (rho0, y0), (rho1, y1) in zip(kept, kept[1:]):
        total += 0.5 * (rho1 - rho0) * (y1 * weight(y1) + y0 * weight(y0))
    return total
