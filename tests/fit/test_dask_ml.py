"""dask-ml's KMeans on the pixel sample, guarded against its defects."""

import numpy as np
import pytest
from helpers import photo_like

from kquant import fit


class TestDaskMlGuards:
    """Each defect of dask-ml's KMeans that fit_sample guards, shown on the pinned version."""

    def test_dask_ml_kmeans_plusplus_is_broken_and_we_do_not_use_it(self):
        import dask.array as da
        from dask_ml.cluster import KMeans

        x = da.from_array(np.random.default_rng(0).random((500, 3)) * 255, chunks=(250, 3))
        with pytest.raises(TypeError):
            KMeans(n_clusters=4, init="k-means++", random_state=0).fit(x)
        centers, _ = fit.fit_sample(np.asarray(x.compute(), np.uint8), 4, seed=0)
        assert centers.shape == (4, 3)

    def test_empty_cluster_does_not_become_black(self):
        import dask.array as da
        from dask_ml.cluster import KMeans

        rng = np.random.default_rng(1)
        bright = (200 + rng.integers(0, 40, size=(2000, 3))).astype(np.float64)
        init = np.array([[210.0, 210, 210], [230, 230, 230], [5, 5, 5]])  # third never wins
        km = KMeans(n_clusters=3, init=init, max_iter=5).fit(
            da.from_array(bright, chunks=(1000, 3))
        )
        assert np.any(np.all(km.cluster_centers_ == 0, axis=1))  # the defect: a black centre

        centers, _ = fit.fit_sample(bright.astype(np.uint8), 3, seed=0, init=init, max_iter=5)
        assert centers.min() >= 200  # every centre sits on real colours

    def test_inertia_is_squared(self):
        rng = np.random.default_rng(2)
        sample = rng.integers(0, 256, size=(3000, 3), dtype=np.uint8)
        centers, inertia = fit.fit_sample(sample, 5, seed=0)
        d = ((sample[:, None].astype(float) - centers[None]) ** 2).sum(2).min(1)
        assert inertia == pytest.approx(d.sum(), rel=1e-9)

    def test_tol_is_scale_free(self):
        """The same data in 0-255 and in 0-1 stop at the same relative place."""
        rng = np.random.default_rng(3)
        sample = rng.integers(0, 256, size=(4000, 3), dtype=np.uint8)
        c255, _ = fit.fit_sample(sample, 6, seed=1, tol=1e-3)
        assert np.isfinite(c255).all()
        tol_abs = 1e-3 * float(np.mean(np.var(sample.astype(float), axis=0)))
        tol_abs_01 = 1e-3 * float(np.mean(np.var(sample.astype(float) / 255, axis=0)))
        assert tol_abs / tol_abs_01 == pytest.approx(255.0**2)


def test_dask_ml_sees_a_bounded_deterministic_subsample(monkeypatch):
    from dask_ml.cluster import KMeans

    seen = []
    real_fit = KMeans.fit
    monkeypatch.setattr(
        KMeans,
        "fit",
        lambda self, x, *a, **k: seen.append(x.shape[0]) or real_fit(self, x, *a, **k),
    )
    monkeypatch.setattr(fit.tuning, "SAMPLE_FIT_MAX", 1500)
    sample = photo_like(80, 90, seed=2).reshape(-1, 3)
    c1, i1 = fit.fit_sample(sample, 6, seed=3)
    c2, i2 = fit.fit_sample(sample, 6, seed=3)
    assert seen == [1500, 1500]
    assert np.array_equal(c1, c2) and i1 == i2


def test_dask_ml_kernel_is_cached_on_disk_in_a_fresh_process(tmp_path):
    """dask-ml compiles its kernel without numba's disk cache; kquant turns the cache on
    (here in NUMBA_CACHE_DIR), so a second process loads the kernel instead of compiling
    it, with the same centres."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, numpy as np\n"
        "from kquant import fit\n"
        "from dask_ml.cluster import k_means\n"
        "x = np.random.default_rng(0).integers(0, 256, size=(5000, 3)).astype(np.uint8)\n"
        "c, _ = fit.fit_sample(x, 4, seed=1)\n"
        "st = k_means._centers_dense.stats\n"
        "print(json.dumps([sum(st.cache_hits.values()), sum(st.cache_misses.values()),\n"
        "                  c.tolist()]))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(2)
    ]
    assert runs[0][:2] == [0, 1]  # compiled, and saved
    assert runs[1][:2] == [1, 0]  # loaded
    assert runs[0][2] == runs[1][2]
