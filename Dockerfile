# preimage server image. Installs with scripts/install.sh, the same script CI runs
# (tests/server/test_container.py keeps the two in step).
FROM python:3.11-slim

RUN groupadd --system preimage && useradd --system --gid preimage --create-home preimage \
    && mkdir -p /data && chown preimage:preimage /data
WORKDIR /app
COPY --chown=preimage:preimage . /app
USER preimage
RUN PREIMAGE_EXTRAS=server VENV=/app/.venv scripts/install.sh

ENV PATH="/app/.venv/bin:${PATH}" \
    PREIMAGE_REGISTRY_DIR=/data/registry \
    PREIMAGE_ADDRESS=0.0.0.0:50051
VOLUME ["/data"]
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["preimage", "health", "--server", "127.0.0.1:50051", "--timeout", "4"]
CMD ["preimage", "serve"]
