"""The smallest palette whose PSNR reaches a target (as pngquant's ``--quality``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kquant.errors import ParameterError
from kquant.fit.driver import FitResult, fit_palette


def sse_for_psnr(psnr_db: float, n_pixels: int) -> float:
    """Largest sum of squared channel errors whose PSNR still reaches ``psnr_db``."""
    return 3.0 * n_pixels * 255.0**2 / 10.0 ** (psnr_db / 10.0)


def fit_for_psnr(
    sample: np.ndarray,
    colours: np.ndarray,
    counts: np.ndarray,
    target_psnr: float,
    *,
    k_max: int = 256,
    seed: int = 0,
    restarts: int = 4,
    max_iter: int = 300,
    sample_fit: str = "auto",
    space: str = "rgb",
    sampled: bool = False,
) -> tuple[FitResult, bool]:
    """The smallest palette whose PSNR reaches ``target_psnr`` (as pngquant's ``--quality``).

    K is searched by bisection on quick fits (no restarts, no swaps), assuming
    the PSNR grows with K; the chosen K is then fitted with the full settings,
    grown one by one while it misses the target, and shrunk one by one while
    the full fit of ``K - 1`` still reaches it.

    Returns
    -------
    result : FitResult
        The fit at the chosen K (``k_max`` if no K reaches the target).
    met : bool
        Whether the target is reached.

    Raises
    ------
    ParameterError
        If ``k_max`` is out of range or the target is not positive.
    """
    if not 2 <= int(k_max) <= 256:
        raise ParameterError(f"k must be between 2 and 256, got {k_max}")
    if not target_psnr > 0:
        raise ParameterError(f"target PSNR must be positive, got {target_psnr}")
    counts = np.asarray(counts, np.int64)
    limit = sse_for_psnr(target_psnr, int(counts.sum()))
    n_unique = len(colours)
    full: dict[str, Any] = dict(
        seed=seed,
        restarts=restarts,
        max_iter=max_iter,
        sample_fit=sample_fit,
        space=space,
        sampled=sampled,
    )

    def quick(k):
        return fit_palette(
            sample,
            colours,
            counts,
            k,
            seed=seed,
            restarts=0,
            swaps=0,
            max_iter=max_iter,
            sample_fit="never",
            space=space,
            sampled=sampled,
        )

    lo, hi = 2, min(int(k_max), max(2, n_unique))
    if quick(hi).sse > limit:  # not even the largest palette: give the best we can
        res = fit_palette(sample, colours, counts, hi, **full)
        return res, res.sse <= limit
    while lo < hi:
        mid = (lo + hi) // 2
        if quick(mid).sse <= limit:
            hi = mid
        else:
            lo = mid + 1
    k = lo
    res = fit_palette(sample, colours, counts, k, **full)
    while res.sse > limit and k < hi:  # the quick fit was luckier: grow
        k += 1
        res = fit_palette(sample, colours, counts, k, **full)
    while k > 2:  # the full fit may reach the target with fewer colours
        smaller = fit_palette(sample, colours, counts, k - 1, **full)
        if smaller.sse > limit:
            break
        k, res = k - 1, smaller
    return res, res.sse <= limit
