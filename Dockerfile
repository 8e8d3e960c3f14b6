# A Prefect worker image for kquant's deployments (deploy/prefect.yaml): Python, git, and
# kquant[flows,s3,aws,geo] with its dependencies; runs as a non-root user.
#
#   docker build -t kquant-worker .
#   docker run --rm -e PREFECT_API_URL=http://HOST:4200/api kquant-worker
#
# The default command starts a process worker for the `kquant` pool; as the image of a
# docker or kubernetes work pool, Prefect runs each flow run in it instead (see
# deploy/pools/). The pull steps clone the repository at KQUANT_REF into the flow run's
# working directory: the image holds the dependencies, the clone the code.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 kquant
WORKDIR /opt/kquant
COPY pyproject.toml README.md ./
COPY kquant ./kquant
COPY flows ./flows
RUN pip install --no-cache-dir '.[flows,s3,aws,geo]'

USER kquant
WORKDIR /home/kquant
ENV PREFECT_HOME=/home/kquant/.prefect \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1 \
    OMP_NUM_THREADS=1
CMD ["prefect", "worker", "start", "--pool", "kquant", "--type", "process"]
