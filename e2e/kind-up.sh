#!/usr/bin/env bash
# The whole Order Pipeline on a local kind cluster, then the cluster e2e suite against it:
#
#   1. checks for docker (with a running engine), kind, kubectl, helm and cargo;
#   2. creates the kind cluster `order-pipeline` from kind-config.yaml, or reuses it;
#   3. builds the five images (`cargo xtask images`) and loads them into the cluster's nodes;
#   4. installs the operator from charts/order-pipeline-operator, image tag = workspace version;
#   5. applies e2e/kind-pipeline.yaml in namespace `shop` and waits until it is Ready, showing
#      `kubectl get orderpipelines` as it goes;
#   6. runs `cargo test -p pipeline-e2e --test e2e` against it (skipped with --no-test).
#
# Rerunning it is safe: every step is an install-or-update. kind needs Docker; e2e/README.md says
# what is checked on machines without it. e2e/kind-down.sh deletes the cluster.
#
# Environment: E2E_NAMESPACE (default shop), E2E_READY_TIMEOUT in seconds (default 900: the first
# run pulls RabbitMQ, Redis and Cassandra images into the nodes), ORDER_PIPELINE_HOME (default
# ~/.cache/order-pipeline: the kind build and the cluster's kubeconfig live there).
set -euo pipefail

usage() {
  echo "usage: e2e/kind-up.sh [--no-test]"
  echo "  --no-test  stop once the pipeline is Ready, without running the e2e suite"
}

run_tests=true
for argument in "$@"; do
  case $argument in
    --no-test) run_tests=false ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

cluster=order-pipeline # also kind-config.yaml's name
namespace=${E2E_NAMESPACE:-shop}
ready_timeout=${E2E_READY_TIMEOUT:-900}
operator_namespace=order-pipeline-system
release=order-pipeline-operator
home=${ORDER_PIPELINE_HOME:-$HOME/.cache/order-pipeline}
kubeconfig=$home/kind/$cluster.kubeconfig

step() { printf '==> %s\n' "$*"; }
warn() { printf 'kind-up: warning: %s\n' "$*" >&2; }
fail() {
  printf 'kind-up: %s\n' "$*" >&2
  exit 1
}

# The image tag: [workspace.package] version of Cargo.toml, the version of every binary.
version=$(sed -n '/^\[workspace\.package\]/,/^\[/ s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml)
[[ -n $version ]] || fail "no [workspace.package] version in Cargo.toml"
# One kind version for the script and the tests: the one e2e/kind-check/go.mod pins.
kind_version=$(awk '($1 == "require" && $2 == "sigs.k8s.io/kind") { print $3 }
  ($1 == "sigs.k8s.io/kind") { print $2 }' e2e/kind-check/go.mod | head -n 1)
[[ -n $kind_version ]] || fail "e2e/kind-check/go.mod does not require sigs.k8s.io/kind"

# --- 1. tools -------------------------------------------------------------------------------------

step "checking docker, kind, kubectl, helm and cargo"
# The images hold x86_64 musl binaries (cargo xtask images); an arm64 host would label them arm64.
[[ $(uname -m) == x86_64 ]] ||
  fail "this host is $(uname -m): the images are built for x86_64 only (x86_64-unknown-linux-musl)"
command -v docker >/dev/null ||
  fail "docker is not installed: kind runs every Kubernetes node as a Docker container. Install \
Docker Engine (https://docs.docker.com/engine/install/). Without Docker, what can be checked is \
checked by: cargo test -p pipeline-e2e --test kind_config (see e2e/README.md)"
if ! docker_error=$(docker info --format '{{.ServerVersion}}' 2>&1 >/dev/null); then
  reason=$(printf '%s\n' "$docker_error" | sed '/^[[:space:]]*$/d' | tail -n 1)
  fail "no Docker engine: the docker CLI is installed but no engine answers (${reason}). kind \
needs a running engine: start it (systemctl start docker) or point DOCKER_HOST at one. Without \
Docker, what can be checked is checked by: cargo test -p pipeline-e2e --test kind_config (see \
e2e/README.md)"
fi
docker_version=$(docker info --format '{{.ServerVersion}}' 2>/dev/null)
echo "  docker engine $docker_version"

# kind: the build of the pinned version in the cache (kind_config's tests make the same one),
# a kind of that version on PATH, a fresh build when Go is there, else whatever kind is on PATH.
kind_dir=$home/bin/kind-$kind_version
build_kind() {
  local go=$1
  local build_dir=$home/go/build/kind-$kind_version
  local staging=$home/bin/.kind-$kind_version.partial-$$
  local log=$build_dir/build.log
  rm -rf "$build_dir" "$staging"
  mkdir -p "$build_dir" "$staging"
  echo "  building kind $kind_version from the Go module proxy (once; log: $log)"
  if ! (cd "$build_dir" && GOWORK=off CGO_ENABLED=0 GOBIN=$staging \
    "$go" install -trimpath -ldflags '-s -w' "sigs.k8s.io/kind@$kind_version") >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "building kind $kind_version failed; full log: $log"
  fi
  echo "kind $kind_version" >"$staging/.complete"
  rm -rf "$kind_dir"
  mv "$staging" "$kind_dir"
}
path_kind=$(command -v kind || true)
path_kind_version=
if [[ -n $path_kind ]]; then
  path_kind_version=$("$path_kind" version 2>/dev/null || true)
fi
go=$(command -v go || true)
if [[ -z $go && -x /usr/local/go/bin/go ]]; then
  go=/usr/local/go/bin/go
fi
if [[ -f $kind_dir/.complete ]]; then
  kind=$kind_dir/kind
elif [[ $path_kind_version == "kind $kind_version "* ]]; then
  kind=$path_kind
elif [[ -n $go ]]; then
  build_kind "$go"
  kind=$kind_dir/kind
elif [[ -n $path_kind ]]; then
  warn "using $path_kind (${path_kind_version:-unknown version}), not the pinned kind $kind_version"
  kind=$path_kind
else
  fail "kind is not installed: install kind $kind_version (https://kind.sigs.k8s.io/docs/user/quick-start/#installation) or Go 1.26+, with which this script builds it"
fi
kind_reported=$("$kind" version)
echo "  $kind_reported ($kind)"

# kubectl and helm from PATH, else the ones `cargo xtask env up` built.
find_tool() {
  local name=$1 pattern=$2 found
  if found=$(command -v "$name"); then
    echo "$found"
    return
  fi
  # The newest of the environment's builds, when there are several versions.
  for found in $pattern; do
    if [[ -x $found ]]; then echo "$found"; fi
  done | tail -n 1
}
kubectl=$(find_tool kubectl "$home/bin/kubernetes-*/kubectl")
[[ -n $kubectl ]] || fail "kubectl is not installed: install it (https://kubernetes.io/docs/tasks/tools/) or run cargo xtask env up, which builds one"
helm=$(find_tool helm "$home/bin/helm-*/helm")
[[ -n $helm ]] || fail "helm is not installed: install Helm 3 (https://helm.sh/docs/intro/install/) or run cargo xtask env up, which builds one"
command -v cargo >/dev/null || fail "cargo is not installed: install Rust with rustup (https://rustup.rs)"
echo "  kubectl $kubectl, helm $helm"

# --- 2. cluster -----------------------------------------------------------------------------------

# kind writes the cluster's credentials here, not into ~/.kube/config.
mkdir -p "$(dirname "$kubeconfig")"
export KUBECONFIG=$kubeconfig
# Not `grep -q`: it would exit at the first match and, under pipefail, fail the pipeline.
if "$kind" get clusters 2>/dev/null | grep -x "$cluster" >/dev/null; then
  step "kind cluster $cluster exists: reusing it (a changed kind-config.yaml needs e2e/kind-down.sh first)"
  "$kind" export kubeconfig --name "$cluster"
else
  # kind-config.yaml maps these host ports; Docker cannot publish a port something holds.
  for port in 8080 8081; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      fail "127.0.0.1:$port is in use, and kind-config.yaml maps it to the cluster (is cargo xtask run running? cargo xtask stop stops it)"
    fi
  done
  step "creating kind cluster $cluster from kind-config.yaml"
  "$kind" create cluster --name "$cluster" --config kind-config.yaml --wait 5m
fi
"$kubectl" get nodes -o wide

# --- 3. images ------------------------------------------------------------------------------------

step "building the images (cargo xtask images)"
cargo xtask images
images=()
for name in gateway processor notifier dashboard operator; do
  images+=("order-pipeline/$name:$version")
done
for image in "${images[@]}"; do
  docker image inspect "$image" >/dev/null 2>&1 ||
    fail "$image is not in Docker's image store after cargo xtask images (its log: $home/logs/images.log)"
done
step "loading ${#images[@]} images into the nodes of $cluster"
"$kind" load docker-image --name "$cluster" "${images[@]}"

# --- 4. operator ----------------------------------------------------------------------------------

step "installing the operator: Helm release $release in namespace $operator_namespace"
# Helm installs the chart's CRD only on first install; applying it keeps a reused cluster current.
"$kubectl" apply --server-side --force-conflicts --field-manager=kind-up -f crds/orderpipelines.yaml
# pullPolicy Never: the image is the one just loaded, and a failed load shows as ErrImageNeverPull
# instead of a pull from a registry that has no such image.
"$helm" upgrade --install "$release" charts/order-pipeline-operator \
  --namespace "$operator_namespace" --create-namespace \
  --set image.tag="$version" --set image.pullPolicy=Never \
  --wait --timeout 5m

# --- 5. pipeline ----------------------------------------------------------------------------------

step "applying e2e/kind-pipeline.yaml in namespace $namespace"
"$kubectl" create namespace "$namespace" --dry-run=client -o yaml | "$kubectl" apply -f -
resource=$("$kubectl" apply --namespace "$namespace" -f e2e/kind-pipeline.yaml -o name)
pipeline=${resource##*/}

step "waiting up to ${ready_timeout}s for orderpipeline/$pipeline to be Ready"
started=$SECONDS
until "$kubectl" wait --namespace "$namespace" --for=condition=Ready \
  "orderpipeline/$pipeline" --timeout=5s >/dev/null 2>&1; do
  if ((SECONDS - started >= ready_timeout)); then
    echo "orderpipeline/$pipeline is not Ready after ${ready_timeout}s; what the cluster says:" >&2
    "$kubectl" describe --namespace "$namespace" "orderpipeline/$pipeline" >&2 || true
    "$kubectl" get events --namespace "$namespace" --sort-by=.lastTimestamp >&2 || true
    "$kubectl" get pods --namespace "$namespace" -o wide >&2 || true
    "$kubectl" logs --namespace "$operator_namespace" "deployment/$release" --tail=40 >&2 || true
    fail "orderpipeline/$pipeline in namespace $namespace did not become Ready (E2E_READY_TIMEOUT=${ready_timeout})"
  fi
  echo "--- $((SECONDS - started))s"
  "$kubectl" get orderpipelines --namespace "$namespace" || true
done
"$kubectl" get orderpipelines --namespace "$namespace"
echo "  orderpipeline/$pipeline is Ready after $((SECONDS - started))s:" \
  "gateway http://localhost:8080, dashboard http://localhost:8081"

# --- 6. e2e suite ---------------------------------------------------------------------------------

if [[ $run_tests == true ]]; then
  step "running the cluster e2e suite against orderpipeline/$pipeline"
  E2E_KUBECONFIG=$kubeconfig E2E_NAMESPACE=$namespace E2E_PIPELINE=$pipeline \
    cargo test -p pipeline-e2e --test e2e -- --ignored --nocapture
fi
echo "kind cluster $cluster is up: KUBECONFIG=$kubeconfig; e2e/kind-down.sh deletes it"
