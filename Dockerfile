# The Order Pipeline's container images, one target per binary: gateway, processor, notifier,
# dashboard and operator. `cargo xtask images` builds them all (and verifies each one).
#
# Nothing is pulled and nothing is compiled here: every image starts FROM scratch and receives a
# statically linked release binary (target x86_64-unknown-linux-musl) from a build context that
# holds only those binaries and a CA bundle, staged by `cargo xtask images`. By hand:
#
#   docker build -f Dockerfile --target gateway --build-arg VERSION=0.1.0 \
#     -t order-pipeline/gateway:0.1.0 <staged context>
#
# The tags are `order-pipeline/<target>:<workspace version>`: the operator runs its workloads as
# `order-pipeline/<component>:<operator version>` and the Helm chart the operator as
# `order-pipeline/operator:<appVersion>`.

# The workspace version (Cargo.toml [workspace.package] version); required.
ARG VERSION
# Cargo.toml [workspace.package] repository.
ARG SOURCE=https://example.invalid/order-pipeline
# Cargo.toml [workspace.package] license.
ARG LICENSES=Apache-2.0

# What every image shares. No shell, no package manager, no /etc/passwd: a numeric non-root user,
# which the pods' `runAsNonRoot` can check without one (the restricted Pod Security Standard).
FROM scratch AS base
ARG VERSION
ARG SOURCE
ARG LICENSES
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSES}"
USER 65532:65532

# The workloads accept amqps:// endpoints for an external RabbitMQ, and lapin verifies the broker
# against the system trust store, which in a scratch image is this one file. The operator needs
# none: it trusts the API server through the service account's CA, and its RabbitMQ management
# client speaks plain HTTP.
FROM base AS workload-base
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

FROM workload-base AS gateway
LABEL org.opencontainers.image.title="order-pipeline gateway" \
      org.opencontainers.image.description="The Order Pipeline API gateway: accounts, tokens and durable order intake."
COPY gateway /usr/local/bin/gateway
# Business (HTTP) and admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/gateway"]

FROM workload-base AS processor
LABEL org.opencontainers.image.title="order-pipeline processor" \
      org.opencontainers.image.description="The Order Pipeline order processor: applies each order to the inventory exactly once and publishes its outcome."
COPY processor /usr/local/bin/processor
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/processor"]

FROM workload-base AS notifier
LABEL org.opencontainers.image.title="order-pipeline notifier" \
      org.opencontainers.image.description="The Order Pipeline notifier: sends each created order's notification exactly once."
COPY notifier /usr/local/bin/notifier
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/notifier"]

FROM workload-base AS dashboard
LABEL org.opencontainers.image.title="order-pipeline dashboard" \
      org.opencontainers.image.description="The Order Pipeline dashboard: a read-only view of processed orders, inventory and notification status, served from Redis."
COPY dashboard /usr/local/bin/dashboard
EXPOSE 8081 9090
ENTRYPOINT ["/usr/local/bin/dashboard"]

FROM base AS operator
LABEL org.opencontainers.image.title="order-pipeline operator" \
      org.opencontainers.image.description="The OrderPipeline operator: reconciles OrderPipeline resources into the pipeline's workloads and dependencies."
COPY order-pipeline-operator /usr/local/bin/order-pipeline-operator
# Admin only (ADMIN_PORT, default 9090): /healthz, /readyz, /metrics.
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/order-pipeline-operator"]
