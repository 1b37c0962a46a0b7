# PLACEHOLDER: the GPU image (CUDA base, the real vllm, both envs from requirements/*.lock,
# non-root user, make as entrypoint) is built in issue #9. Building this file fails on purpose.
FROM debian:bookworm-slim
RUN echo "The GPU Docker image is not implemented yet (issue #9); use 'make setup' on the host." >&2 && exit 1
