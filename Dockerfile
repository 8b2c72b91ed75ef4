# The kvmfleet operator image: `kvmfleet run` as a non-root user.
#
#   docker build -t kvmfleet:0.1.0 .
#
# Stage 1 builds libvirt-python (a C extension linked against libvirt) into a virtualenv;
# stage 2 is the slim runtime: libvirt's client library, the OpenSSH client (libvirt's
# qemu+ssh transport runs `ssh`), the virtualenv, and nothing to compile with.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt-dev pkg-config gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/kvmfleet
WORKDIR /src
# Dependencies first (a layer that survives code changes), then the operator itself.
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/kvmfleet/bin/pip install . \
    && /opt/kvmfleet/bin/python -m compileall -q /opt/kvmfleet \
    && /opt/kvmfleet/bin/kvmfleet version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="kvmfleet" \
      org.opencontainers.image.description="Kubernetes operator running a fleet of KVM hypervisors and their virtual machines" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
    && apt-get install -y --no-install-recommends libvirt0 openssh-client \
    && rm -rf /var/lib/apt/lists/*
# A fixed numeric user: Kubernetes' runAsNonRoot can check it, and `ssh` finds it in
# /etc/passwd (it refuses to run for a uid without an entry).
RUN groupadd --system --gid 65532 kvmfleet \
    && useradd --system --uid 65532 --gid 65532 --home-dir /home/kvmfleet --create-home \
       --shell /usr/sbin/nologin kvmfleet
COPY --from=build /opt/kvmfleet /opt/kvmfleet
# The root filesystem may be read-only: bytecode is compiled above, and connection files
# go to KVMFLEET_RUNTIME_DIR (the chart mounts an in-memory emptyDir on /run/kvmfleet).
ENV PATH=/opt/kvmfleet/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KVMFLEET_RUNTIME_DIR=/run/kvmfleet/private
USER 65532:65532
WORKDIR /home/kvmfleet
# 8080: Prometheus /metrics; 8081: liveness /healthz.
EXPOSE 8080 8081
ENTRYPOINT ["kvmfleet", "run"]
