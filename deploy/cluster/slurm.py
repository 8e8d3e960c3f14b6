"""Run kquant on a SLURM cluster through dask-jobqueue (an example to adapt).

Usage: python deploy/cluster/slurm.py SOURCE TARGET [--jobs N] [-k 16]

Requires `pip install dask-jobqueue` on the submit host; workers need kquant installed in the
same environment (the job script activates it through `job_script_prologue`).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("target")
    ap.add_argument("--jobs", type=int, default=4, help="worker jobs to submit")
    ap.add_argument("-k", "--colors", type=int, default=16)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    import kquant

    cluster = SLURMCluster(
        queue="normal",  # your partition
        account=None,  # your account, if the site needs one
        cores=4,
        processes=4,  # 4 single-threaded worker processes per job
        memory="8GiB",  # ~1-2 GiB per worker process is plenty
        walltime="01:00:00",
        job_script_prologue=["source ~/venvs/kquant/bin/activate"],
        local_directory="$TMPDIR",
    )
    cluster.scale(jobs=a.jobs)
    with Client(cluster) as client:
        client.wait_for_workers(1, timeout=600)
        res = kquant.quantize(
            a.source,
            a.target,
            kquant.QuantizeParams(k=a.colors),
            overwrite=a.overwrite,
            address=cluster.scheduler_address,
        )
    cluster.close()
    m = res.meta.metrics
    print(
        f"{res.target}: PSNR {m['psnr']}, {m['store_bits_per_pixel']:.3f} bits/px, "
        f"{res.timings['total']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
