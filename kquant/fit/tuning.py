"""Every tuning constant of the fit, one line each; measurements behind them: bench/README.md
("Fit tuning")."""

#: Channel bits of the coarse histogram that seedings, restarts and swap moves run on.
COARSE_BITS = 5
#: Coarse cells holding more than HEAVY_CELL / K of the pixels are split 2 bits finer.
HEAVY_CELL = 0.25
#: Lloyd iterations after each swap trial before it is judged (random-swap style).
SWAP_TRIAL_ITER = 4
#: Swap trials: SWAPS_FACTOR * (8 + K // 4) on an exact RGB histogram, 8 + K // 4 elsewhere.
SWAPS_FACTOR = 2
#: The runner-up seeding is refined too when its coarse error is within this fraction of the best's.
RUNNER_UP_GAP = 0.005
#: Finalists refined on a compact histogram: there the coarse ranking predicts the fine one poorly.
LARGE_FINALISTS = 3
#: From this K on, a sample's compact histogram refines one finalist (more only fit its noise).
SAMPLED_ONE_FINALIST_K = 128
#: From this many colours the finalists are refined side by side in threads.
PARALLEL_FINALISTS_MIN = 1 << 18
#: Up to this many colours the final Lloyd runs until no assignment changes; above, until an
#: iteration gains less than 1e-5 (and RGB histograms take the compact kernels).
FULL_CONVERGENCE_MAX = 1 << 21
#: A sample's RGB histogram with more colours than this takes the compact kernels.
SAMPLED_LARGE_MIN = 1 << 18
#: Images of at least this many pixels also seed from dask-ml's KMeans on the pixel sample.
SAMPLE_FIT_MIN_PIXELS = 1 << 23
#: Pixels of the sample that dask-ml's KMeans sees at most (a seeded subsample).
SAMPLE_FIT_MAX = 1 << 16
#: Points per slab of the dense distance products (bounds their temporaries).
SLAB_ROWS = 1 << 16
#: Largest key range that cells are numbered through a table of flags (4 MiB) instead of a sort.
RANK_MAX = 1 << 22
