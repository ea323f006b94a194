# One image for every role: api, orchestration worker, beat and the dataplane agent.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 util-linux \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mobility mobility
COPY workers workers
COPY state_transfer state_transfer
COPY dataplane dataplane
COPY api api
RUN pip install --no-cache-dir .
