#!/usr/bin/env bash
# A SLURM batch script (an example to adapt): a dask scheduler and workers inside one
# allocation, found through a scheduler file, then kquant on them.
#
#   sbatch deploy/cluster/hpc-job.sh /shared/mosaic.tif /shared/mosaic.kquant
#
#SBATCH --job-name=kquant
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=1
#SBATCH --mem-per-cpu=2G
#SBATCH --time=01:00:00
set -euo pipefail
source ~/venvs/kquant/bin/activate            # kquant installed on the shared filesystem
export DASK_SCHEDULER_FILE="$PWD/scheduler-$SLURM_JOB_ID.json"

dask scheduler --scheduler-file "$DASK_SCHEDULER_FILE" &
srun --ntasks=$((SLURM_NTASKS - 1)) dask worker --scheduler-file "$DASK_SCHEDULER_FILE" \
    --nthreads 1 --memory-limit 2GiB &
while [[ ! -s "$DASK_SCHEDULER_FILE" ]]; do sleep 1; done

kquant quantize "$1" "$2" -k 16 --scheduler-file "$DASK_SCHEDULER_FILE"
# or, for a Prefect flow run started inside the allocation: DASK_SCHEDULER_FILE is read
# by both flows (python -m flows.quantize SRC DST, or a process worker started here)
