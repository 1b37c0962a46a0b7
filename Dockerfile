# GPU image: the harness with the real vllm, both envs built by the Makefile from the same lock
# files as on any host (requirements/train.lock, requirements/eval-gpu.lock). Build: make docker.
#   docker run --gpus all --ipc=host -v "$PWD/out:/data" merge-harness make recipe=qwen2_en_zh
# (--ipc=host, or --shm-size: the vLLM scorer stages weights in /dev/shm, 64 MB by default)
# The run store, the Hugging Face cache and the published leaderboard live under /data.
FROM nvidia/cuda:13.0.0-devel-ubuntu22.04

ARG PYTHON=python3.11
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHON=${PYTHON} \
    HARNESS_ENV_DIR=/opt/envs \
    EVAL_VARIANT=gpu \
    HF_HOME=/data/hf \
    HARNESS_RUNS_DIR=/data/runs \
    HARNESS_LEADERBOARD_DIR=/data/leaderboard

# Python 3.11 (the lock files' interpreter) from the deadsnakes PPA, as vLLM's own image does.
# Debian/Ubuntu package versions move with the PPA; the Python packages are pinned by the locks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev make git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 harness \
    && mkdir -p /opt/envs /opt/harness /data \
    && chown harness:harness /opt/envs /opt/harness /data
USER 1000:1000
WORKDIR /opt/harness

# The envs first (their own layer: rebuilt only when a lock or a build script changes).
COPY --chown=harness:harness Makefile ./
COPY --chown=harness:harness requirements/ requirements/
COPY --chown=harness:harness scripts/ scripts/
RUN make envs

COPY --chown=harness:harness . .
RUN make install-harness

VOLUME ["/data"]
# `docker run IMAGE` runs the default recipe; `docker run IMAGE make recipe=NAME` any other.
CMD ["make"]
