"""The fit driver: seed -> swap -> finalists -> refine -> polish, on either form of histogram.

1. **Seed** on a coarse histogram (colours merged into 5-bit cells at their weighted
   means, heavy cells split finer): ``restarts + 1`` weighted k-means++ seedings, each
   run to convergence, plus, for large images, dask-ml's KMeans on a pixel sample
   (:mod:`kquant.fit.dask_ml`);
2. **swap** -- the best is improved by merge/split swap moves;
3. **finalists** -- the best, and where the coarse ranking is unreliable the next ones;
4. **refine** -- Lloyd through 6- and 7-bit cells to the exact histogram: the fixed point
   of Lloyd on every pixel (:mod:`kquant.fit.histograms` says how for each form);
5. **polish** -- rounded to the nearest uint8, then Lloyd in integers while the exact error
   drops.

An image with at most K colours gets exactly its colours. Deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from kquant.colour import histogram, spaces
from kquant.errors import ParameterError
from kquant.fit import tuning
from kquant.fit.dask_ml import fit_sample
from kquant.fit.histograms import histogram_for
from kquant.fit.kmeans import kmeans_plusplus, lloyd_bounded, swap_moves

SAMPLE_FIT_MODES = ("auto", "always", "never")


@dataclasses.dataclass(frozen=True)
class FitResult:
    """A fitted palette and how it was obtained.

    Attributes
    ----------
    palette : ndarray of uint8, shape (n, 3)
        Palette entries, most used first; ``n <= k``.
    sse : int
        Exact sum of squared channel errors of the image reconstructed with it.
    n_pixels, n_unique : int
        Pixels and distinct colours of the image.
    lossless : bool
        True when the image has at most ``k`` colours (palette = those colours).
    sample_inertia : float or None
        Sum of squared distances of the sample to the dask-ml centres.
    refined_from : str
        Which seeding gave the best refinement (``"sample"``: dask-ml's fit;
        ``"kmeans++-i"``: a seeding on the coarse histogram; ``+Nswaps``: swap
        moves kept), ``"exact"`` (lossless) or ``"imposed"`` (a given palette).
    n_iter : int
        Lloyd iterations of the final refinement on the exact histogram.
    target_met : bool or None
        With a target PSNR: whether the fit reaches it.
    mode : str
        ``"exact"`` (refined on the whole image's histogram; ``sse`` is the
        image's) or ``"sample"`` (refined on the sample's histogram; ``sse``,
        ``n_pixels`` and ``n_unique`` are the sample's); ``"imposed"`` for a
        given palette.
    timings : dict
        Seconds spent per stage.
    nodata_index : int or None
        The palette index reserved for masked pixels (the last entry), or None.
    masked_pixels : int or None
        Masked pixels of the image (exact mode; None when not counted).
    """

    palette: np.ndarray
    sse: int
    n_pixels: int
    n_unique: int
    lossless: bool
    sample_inertia: float | None = None
    refined_from: str = "sample"
    n_iter: int = 0
    target_met: bool | None = None
    mode: str = "exact"
    timings: dict = dataclasses.field(default_factory=dict)
    nodata_index: int | None = None
    masked_pixels: int | None = None

    @property
    def mse(self) -> float:
        return self.sse / (3.0 * self.n_pixels) if self.n_pixels else 0.0

    def to_json(self) -> dict:
        """The result as JSON values (the palette as a list of ``[r, g, b]``)."""
        d = dataclasses.asdict(self)
        d["palette"] = np.asarray(self.palette).tolist()
        d["sse"], d["n_pixels"], d["n_unique"] = (
            int(self.sse),
            int(self.n_pixels),
            int(self.n_unique),
        )
        d["mse"] = float(self.mse)
        return d

    @classmethod
    def from_json(cls, data: dict) -> FitResult:
        """Inverse of :meth:`to_json`; keys that are not fields (``mse``, a caller's own) are
        ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in data.items() if k in names}
        d["palette"] = np.asarray(d["palette"], np.uint8).reshape(-1, 3)
        return cls(**d)


def fit_palette(
    sample: np.ndarray | None,
    colours: np.ndarray,
    counts: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    restarts: int = 4,
    max_iter: int = 300,
    sample_fit: str = "auto",
    swaps: int | None = None,
    space: str = "rgb",
    sampled: bool = False,
) -> FitResult:
    """Fit a K-colour palette from a pixel sample and the image's exact histogram.

    Parameters
    ----------
    sample : ndarray of uint8, shape (m, 3), or None
        Pixels drawn from the image (see :mod:`kquant.sampling`); used by the
        dask-ml seeding only.
    colours : ndarray of uint32
        Unique colour codes of the whole image (see :mod:`kquant.histogram`).
    counts : ndarray of int64
        Pixel count of each colour.
    k : int
        Palette size, 2 to 256.
    seed, restarts, max_iter : int, keyword-only
        Seed of every random choice; extra k-means++ seedings; iteration cap
        of each Lloyd run.
    sample_fit : {"auto", "always", "never"}, keyword-only
        Whether dask-ml's sample fit is one of the seedings ("auto": images of at
        least :data:`~kquant.fit.tuning.SAMPLE_FIT_MIN_PIXELS` pixels).
    swaps : int, optional, keyword-only
        Merge/split trials on the coarse histogram (default ``8 + k // 4``, twice as
        many on an exact RGB histogram).
    space : {"rgb", "oklab", "lab"}, keyword-only
        Space the squared error is minimised in (see :mod:`kquant.colorspace`);
        ``sse`` is still the RGB error of the assignment in that space.
    sampled : bool, keyword-only
        The histogram is a sample's (sample mode): it takes the compact kernels from
        fewer colours, and from K = 128 refines one finalist (more only fit the
        sample's noise).

    Returns
    -------
    FitResult

    Raises
    ------
    ParameterError
        If ``k`` is out of range, ``sample_fit`` or ``space`` unknown or the
        histogram empty.
    """
    from threadpoolctl import threadpool_limits

    # the products here are thin (n x 3 by 3 x k): one BLAS thread is fastest, and
    # leaves the other cores to dask
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit(
            sample,
            colours,
            counts,
            k,
            seed=seed,
            restarts=restarts,
            max_iter=max_iter,
            sample_fit=sample_fit,
            swaps=swaps,
            space=space,
            sampled=sampled,
        )


def _fit(
    sample, colours, counts, k, *, seed, restarts, max_iter, sample_fit, swaps, space, sampled
) -> FitResult:
    spaces.check_space(space)
    if not 2 <= int(k) <= 256:
        raise ParameterError(f"k must be between 2 and 256, got {k}")
    if sample_fit not in SAMPLE_FIT_MODES:
        raise ParameterError(
            f"sample_fit must be one of {', '.join(SAMPLE_FIT_MODES)}, got {sample_fit!r}"
        )
    colours = np.asarray(colours, np.uint32)
    counts = np.asarray(counts, np.int64)
    if not colours.size:
        raise ParameterError("cannot fit a palette to an image with no pixels")
    n_pixels = int(counts.sum())
    n_colours = len(colours)
    if n_colours <= k:  # lossless: exactly the image's colours, most used first
        order = np.argsort(-counts, kind="stable")
        return FitResult(
            palette=histogram.decode(colours)[order],
            sse=0,
            n_pixels=n_pixels,
            n_unique=n_colours,
            lossless=True,
            refined_from="exact",
        )

    hist = histogram_for(colours, counts, space=space, sampled=sampled)
    # 1. seed on the coarse cells (on the colours themselves when there are too few cells)
    coarse = hist.cells(tuning.COARSE_BITS, heavy=tuning.HEAVY_CELL / k)
    if len(coarse[0]) <= 2 * k:
        coarse = hist.points()
    seeds, sample_inertia = [], None
    if sample is not None and (
        sample_fit == "always"
        or (sample_fit == "auto" and n_pixels >= tuning.SAMPLE_FIT_MIN_PIXELS)
    ):
        start, sample_inertia = fit_sample(sample, k, seed=seed)
        seeds.append(("sample", spaces.from_rgb(start, space)))
    for r in range(restarts + 1):
        seeds.append(
            (f"kmeans++-{r}", kmeans_plusplus(*coarse, k, seed=np.random.default_rng([seed, 2, r])))
        )
    runs = _converge(coarse, seeds, max_iter)
    inertia, name, centers = runs[0]

    # 2. swap moves on the best
    n_swaps = hist.swaps_factor * (8 + k // 4) if swaps is None else int(swaps)
    if n_swaps > 0:
        centers, inertia, accepted = swap_moves(
            *coarse,
            centers,
            inertia,
            trials=n_swaps,
            seed=np.random.default_rng([seed, 3]),
            max_iter=max_iter,
            trial_iter=tuning.SWAP_TRIAL_ITER,
        )
        if accepted:
            name += f"+{accepted}swaps"

    # 3. finalists: the best, the next seedings where the histogram's form asks for them,
    # and the runner-up when the coarse cells cannot tell it from the best
    n_final = hist.finalists(k)
    if (
        hist.runner_up
        and len(runs) > n_final
        and runs[n_final][0] <= inertia * (1 + tuning.RUNNER_UP_GAP)
    ):
        n_final += 1
    finalists = [(name, centers)] + [(r[1], r[2]) for r in runs[1:n_final]]

    # 4. refine each through ever finer cells (far fewer iterations on every colour)
    levels = _finer_levels(hist, len(coarse[0]))

    def refine(c):
        for points, weights in levels:
            c = lloyd_bounded(points, weights, c, max_iter=max_iter)[0]
        return hist.lloyd(c, max_iter=max_iter)

    done = _map_finalists(
        refine, [c for _, c in finalists], parallel=n_colours >= tuning.PARALLEL_FINALISTS_MIN
    )
    # the lowest inertia; in a tie, the earlier finalist
    best = min(range(len(done)), key=lambda i: (done[i][1], i))
    name = finalists[best][0]
    centers, _, n_iter = done[best]

    # 5. polish in integers; entries most used first
    pal, sse, use = hist.polish(centers)
    pal = pal[np.argsort(-use, kind="stable")]
    return FitResult(
        palette=pal,
        sse=int(sse),
        n_pixels=n_pixels,
        n_unique=n_colours,
        lossless=False,
        sample_inertia=sample_inertia,
        refined_from=name,
        n_iter=n_iter,
    )


def _converge(coarse: tuple[np.ndarray, np.ndarray], seeds: list, max_iter: int) -> list:
    """``(inertia, name, centres)`` of each seeding run to convergence on the coarse cells,
    lowest inertia first (ties in seeding order)."""
    points, weights = coarse
    runs = []
    for name, init in seeds:
        centers, _, inertia, _ = lloyd_bounded(points, weights, init, max_iter=max_iter)
        runs.append((inertia, name, centers))
    runs.sort(key=lambda r: r[0])
    return runs


def _finer_levels(hist, size: int) -> list:
    """Cells of 6, then 7 bits per channel, while they are markedly fewer than the colours."""
    levels = []
    for bits in range(tuning.COARSE_BITS + 1, 8):
        if size >= 0.7 * hist.n_colours:
            break
        points, weights = hist.cells(bits)
        if len(points) >= 0.7 * hist.n_colours:
            break
        levels.append((points, weights))
        size = len(points)
    return levels


def finalist_threads(n: int) -> int:
    """Threads that refine ``n`` finalists at once: one each on a multi-core machine."""
    return n if (os.cpu_count() or 1) > 1 else 1


def _map_finalists(refine, starts: list, *, parallel: bool) -> list:
    """``[refine(c) for c in starts]``; with ``parallel``, the finalists side by side in
    threads (independent refinements whose passes release the GIL; same results, same
    order; measurements in bench/README.md, "Fit tuning")."""
    threads = finalist_threads(len(starts)) if parallel else 1
    if threads <= 1:  # one finalist, one core, or a small histogram
        return [refine(c) for c in starts]
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="kquant-fit") as pool:
        return list(pool.map(refine, starts))
