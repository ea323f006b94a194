# One image for every role: the API, the orchestration worker, beat and the dataplane agent.
#
# No registry is reachable on the machines this runs on, so the base is a local image:
# scripts/base_rootfs.sh builds a Debian bookworm root file system with python3 (debootstrap),
# and scripts/compose_site.sh build (python -m cli.compose_site build) imports it as
# service-mobility-base:<hash of its package list>, stages the build context (the packages,
# pyproject.toml and a wheelhouse the host's pip downloaded: PyPI is reached through the
# host's own CA bundle, which must not go into an image) and builds this file FROM it with the
# host network (apt only). The image is tagged with a hash of what went in, so an unchanged
# tree is not built again.
ARG BASE=service-mobility-base:latest

FROM ${BASE} AS venv
ENV DEBIAN_FRONTEND=noninteractive PYTHONDONTWRITEBYTECODE=1
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && apt-get update && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies first, in a layer of their own: a change to the sources rebuilds only the
# project's own install (seconds).
COPY wheels /wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -q --no-index --find-links /wheels -r /wheels/requirements.txt
COPY pyproject.toml README.md ./
COPY mobility mobility
COPY workers workers
COPY state_transfer state_transfer
COPY dataplane dataplane
COPY api api
COPY cli cli
RUN /opt/venv/bin/pip install -q --no-index --no-deps --no-build-isolation . \
    && /opt/venv/bin/python -c "import workers.app, api.app, cli.main"

FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# iproute2: `ip netns exec` (sysctls in a namespace, the state relay); ctr alone out of
# Debian's containerd package: the agent drives the lab's containerd through its socket (the
# daemon runs on the host, under /run/service-mobility/<lab>/containerd); it runs no daemon.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends iproute2 \
    && cd /tmp && apt-get download containerd \
    && dpkg-deb --fsys-tarfile containerd_*.deb | tar -x -C / ./usr/bin/ctr \
    && rm -f containerd_*.deb \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/*
COPY --from=venv /opt/venv /opt/venv
# The agent names the lab's reference images by a hash over the rootfs's stamp (and the
# workloads' sources, which are these): this image's root is that rootfs (imported from it), so
# its stamp is where dataplane.lab.images looks for it under MOBILITY_CACHE.
RUN mkdir -p /opt/mobility-cache/rootfs && ln -s / /opt/mobility-cache/rootfs/bookworm-python3 \
    && test -f /opt/mobility-cache/rootfs/bookworm-python3/etc/service-mobility-rootfs
ENV MOBILITY_CACHE=/opt/mobility-cache
WORKDIR /app
