# Redis for a compose site: Debian's redis-server on the same local base image as the project's
# (no registry is reachable, so no redis:7). Built with the host network (apt only).
ARG BASE=service-mobility-base:latest
FROM ${BASE}
ENV DEBIAN_FRONTEND=noninteractive
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d \
    && apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /usr/share/doc/* /usr/share/man/* \
    && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "/usr/local/etc/redis/redis.conf"]
