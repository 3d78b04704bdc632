# shellcheck shell=sh
# Gives every quorum queue of a managed RabbitMQ a member on every node: run as `sh -c` by the
# queue-membership Job after each change of the replica count (and again after its TTL), with
# the image's CLI tools. A queue declared while the cluster was still forming, or before it grew,
# has members only on the nodes that were in the cluster then; `rabbitmq-queues grow` adds the
# others, and does nothing where a node is a member already.
#
# Parameters (environment): NODES, the node names, space-separated (the first is asked);
# QUEUES, the workload queues to wait for (the workloads declare them when they start);
# ATTEMPTS, how many times to look, 5 s apart, before giving up (the Job then retries).
set -eu
nodes="${NODES:?NODES must list the node names}"
queues="${QUEUES:?QUEUES must list the workload queues}"
attempts="${ATTEMPTS:-60}"
first="${nodes%% *}"
count=0
for _ in $nodes; do count=$((count + 1)); done

# Waits until "$@" succeeds, at most ATTEMPTS times.
wait_for() {
  what="$1"
  shift
  attempt=1
  until "$@" >/dev/null 2>&1; do
    if [ "$attempt" -ge "$attempts" ]; then
      echo "gave up waiting for $what after $attempt attempts" >&2
      "$@" >&2 || true
      exit 1
    fi
    attempt=$((attempt + 1))
    sleep 5
  done
  echo "$what"
}

# One queue's own status, not a listing: list_queues waits for every queue of the vhost and
# took its full 60 s timeout on a forming cluster.
queue_declared() {
  rabbitmq-queues --node "$first" -q quorum_status "$1"
}

wait_for "all $count nodes are running in one cluster" \
  rabbitmqctl --node "$first" await_online_nodes "$count" --timeout 10
for queue in $queues; do
  wait_for "queue $queue is declared" queue_declared "$queue"
done
# Prints each queue's new size: the operator's status reports the members from then on.
for node in $nodes; do
  rabbitmq-queues --node "$first" grow "$node" all
done
