#!/usr/bin/env bash
# Deletes the kind cluster e2e/kind-up.sh made (`order-pipeline`), its nodes, everything on it,
# and its kubeconfig. Deleting a cluster that does not exist is not an error.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

cluster=order-pipeline
home=${ORDER_PIPELINE_HOME:-$HOME/.cache/order-pipeline}
kubeconfig=$home/kind/$cluster.kubeconfig

fail() {
  printf 'kind-down: %s\n' "$*" >&2
  exit 1
}

kind_version=$(awk '($1 == "require" && $2 == "sigs.k8s.io/kind") { print $3 }
  ($1 == "sigs.k8s.io/kind") { print $2 }' e2e/kind-check/go.mod | head -n 1)
# The kind kind-up.sh used: the cached build of the pinned version, else the one on PATH.
if [[ -n $kind_version && -f $home/bin/kind-$kind_version/.complete ]]; then
  kind=$home/bin/kind-$kind_version/kind
elif ! kind=$(command -v kind); then
  fail "kind is not installed (neither $home/bin/kind-$kind_version/kind nor on PATH): e2e/kind-up.sh never made a cluster here"
fi
if ! command -v docker >/dev/null; then
  echo "docker is not installed, so there is no kind cluster to delete"
  exit 0
fi
docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info failed): kind cannot reach its cluster's nodes"

echo "==> deleting kind cluster $cluster"
"$kind" delete cluster --name "$cluster" --kubeconfig "$kubeconfig"
rm -f "$kubeconfig"
