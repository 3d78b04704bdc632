#!/bin/bash
# Runs a stand-in dependency image's real command from its root filesystem the way the operator's
# pods run it, and checks that it answers. Run by `cargo xtask images --dependencies` (from
# xtask/src/images/dependencies/check.sh) as root, inside fresh mount, network, PID, UTS and IPC
# namespaces (`unshare --fork --kill-child`):
#
# * the server binds the contract's own ports on a private loopback, so nothing clashes with the
#   project's environment or anything else on the machine;
# * this script is PID 1 of its namespace: when it exits, or xtask dies, the kernel kills every
#   process it started, and its mounts vanish with the namespace.
#
# As in the pods: uid and gid 999 (supplementary group 999, as fsGroup gives), every capability
# dropped, no privilege escalation, a read-only root filesystem; writable are only /tmp (tmpfs)
# and the volumes each check mounts, owned by 999.
#
# Usage: check.sh ROOTFS WORK CHECK ENV_FILE WORKDIR
#   ROOTFS    the image's root filesystem (a mounted working container; left unchanged)
#   WORK      an empty directory for the volumes, logs and the read-only root's mount point
#   CHECK     redis | rabbitmq | cassandra-tools | cassandra
#   ENV_FILE  the image's environment, one NAME=value a line (its config's Env)
#   WORKDIR   the image's working directory
# Prints what each step saw; a summary of what was verified goes to WORK/summary.
set -euo pipefail

rootfs="$1"
work="$2"
check="$3"
mapfile -t image_env < "$4"
workdir="$5"
root="$work/root"
summary="$work/summary"
: > "$summary"

say() { echo "check: $*"; }
verified() { say "ok: $*"; echo "$*" >> "$summary"; }
fail() {
  echo "check: FAILED: $*" >&2
  exit 1
}

# The root filesystem, read-only, with what a container runtime provides.
mount --make-rprivate /
mkdir -p "$root"
mount --bind "$rootfs" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777,size=512m tmpfs "$root/tmp"
ip link set lo up

# volume PATH: a fresh writable directory mounted at PATH, owned by 999 (like a volume with
# fsGroup 999).
volume() {
  local dir="$work/volumes$1"
  mkdir -p "$dir"
  chown 999:999 "$dir"
  chmod 2770 "$dir"
  mount --bind "$dir" "$root$1"
}

# read_only_files PATH DIR: DIR's files mounted read-only at PATH (a ConfigMap).
read_only_files() {
  mount --bind "$2" "$root$1"
  mount -o remount,bind,ro "$root$1"
}

# "${pod[@]}" [NAME=value]... COMMAND...: runs COMMAND in the image as the pods do, with the
# image's environment plus the given variables, from the image's working directory. Every step
# execs the next, so the pid of a background "${pod[@]}" is the command's own.
pod=(
  chroot "$root" /usr/bin/setpriv --reuid=999 --regid=999 --groups=999 --no-new-privs
  --inh-caps=-all --bounding-set=-all
  /usr/bin/env -i --chdir="$workdir" "${image_env[@]}"
)
as_pod() {
  "${pod[@]}" "$@"
}

# pod_identity NAME FQDN: the pod's hostname, and an /etc/hosts naming it as the kubelet writes
# one (the pod's address is loopback here).
pod_identity() {
  hostname "$1"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\t%s %s\n' \
    "$2" "$1" > "$work/hosts"
  mount --bind "$work/hosts" "$root/etc/hosts"
}

server=""
server_log=""
# start LOG [NAME=value]... COMMAND...: the server, in the background.
start() {
  server_log="$work/$1"
  shift
  say "starting: $*"
  "${pod[@]}" "$@" > "$server_log" 2>&1 &
  server=$!
}

server_failed() {
  echo "--- last lines of the server's output ($server_log) ---" >&2
  tail -n 40 "$server_log" >&2 || true
  fail "$@"
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND until it succeeds, the server exits or time
# runs out.
wait_until() {
  local seconds="$1" what="$2" started=$SECONDS
  shift 2
  while true; do
    if "$@" > "$work/probe.out" 2>&1; then
      say "$what after $((SECONDS - started))s"
      return 0
    fi
    if ! kill -0 "$server" 2> /dev/null; then
      server_failed "the server exited before $what"
    fi
    if [ $((SECONDS - started)) -ge "$seconds" ]; then
      echo "--- the last probe printed ---" >&2
      cat "$work/probe.out" >&2
      server_failed "no $what within ${seconds}s"
    fi
    sleep 1
  done
}

# stop SECONDS: SIGTERM, as the kubelet sends, and the server must exit within SECONDS.
stop() {
  local seconds="$1" started=$SECONDS
  kill -TERM "$server"
  while kill -0 "$server" 2> /dev/null; do
    if [ $((SECONDS - started)) -ge "$seconds" ]; then
      kill -KILL "$server"
      server_failed "the server did not stop within ${seconds}s of SIGTERM"
    fi
    sleep 0.2
  done
  local status=0
  wait "$server" || status=$?
  say "stopped on SIGTERM after $((SECONDS - started))s (exit status $status)"
}

check_redis() {
  volume /data
  local password="check-$RANDOM$RANDOM"
  # The operator's command, verbatim.
  start redis.log REDIS_PASSWORD="$password" sh -c \
    'umask 077; exec redis-server --appendonly yes --appendfsync always --save "" --dir /data --requirepass "$REDIS_PASSWORD"'
  wait_until 60 "PING answered" as_pod REDIS_PASSWORD="$password" sh -c \
    'test "$(REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p 6379 PING)" = PONG'
  local version
  version="$(as_pod redis-server --version)"
  say "$version"
  case "$version" in
    *"v=$EXPECTED_VERSION "*) ;;
    *) fail "expected Redis $EXPECTED_VERSION" ;;
  esac
  if as_pod redis-cli -h 127.0.0.1 -p 6379 PING | grep -qx PONG; then
    fail "Redis answered PING without the password"
  fi
  as_pod REDIS_PASSWORD="$password" sh -c \
    'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli -h 127.0.0.1 -p 6379 SET image-check ok' | grep -qx OK \
    || fail "SET failed"
  # appendfsync always: the write is in the append-only file before Redis answers.
  grep -rqa image-check "$work/volumes/data/appendonlydir/" \
    || fail "the acknowledged SET is not in the append-only file"
  local files
  files="$(find "$work/volumes/data" -type f -printf '%m %U:%G %P\n' | sort)"
  say "files in /data: $(echo "$files" | tr '\n' ',')"
  echo "$files" | grep -q ' appendonlydir/' || fail "no append-only file in /data"
  if echo "$files" | grep -v '^600 999:999 '; then
    fail "files in /data are not private to uid 999 (umask 077)"
  fi
  verified "redis $EXPECTED_VERSION: PING -> PONG with the password (NOAUTH without), SET ok and in the append-only file before the reply, append-only files mode 600 uid 999 in /data"
  stop 30
}

check_rabbitmq() {
  local pod_name=rabbitmq-0 headless=rabbitmq-headless namespace=image-check
  local node="rabbit@$pod_name.$headless.$namespace.svc"
  local password="check-$RANDOM$RANDOM"
  # The node name's host is the pod's DNS name, which the headless Service makes resolvable.
  pod_identity "$pod_name" "$pod_name.$headless.$namespace.svc"
  # A ConfigMap like the operator's.
  mkdir -p "$work/config"
  cat > "$work/config/rabbitmq.conf" <<CONF
log.console = true
log.console.level = info
log.file = false
cluster_formation.peer_discovery_backend = classic_config
cluster_formation.classic_config.nodes.1 = $node
cluster_partition_handling = pause_minority
loopback_users.guest = false
listeners.tcp.default = 5672
management.tcp.port = 15672
vm_memory_high_watermark.absolute = 400MB
CONF
  echo '[rabbitmq_management,rabbitmq_prometheus].' > "$work/config/enabled_plugins"
  read_only_files /etc/rabbitmq "$work/config"
  volume /var/lib/rabbitmq
  local rabbit_env=(
    HOME=/var/lib/rabbitmq
    RABBITMQ_MNESIA_BASE=/var/lib/rabbitmq/mnesia
    RABBITMQ_CONFIG_FILE=/etc/rabbitmq/rabbitmq.conf
    RABBITMQ_ENABLED_PLUGINS_FILE=/etc/rabbitmq/enabled_plugins
    RABBITMQ_NODENAME="$node"
    RABBITMQ_USE_LONGNAME=true
    RABBITMQ_DEFAULT_USER=pipeline
    RABBITMQ_DEFAULT_PASS="$password"
  )
  start rabbitmq.log "${rabbit_env[@]}" rabbitmq-server
  # ping answers once the Erlang node is up; check_running once RabbitMQ has booted in it.
  wait_until 180 "rabbitmq-diagnostics check_running answered" \
    as_pod "${rabbit_env[@]}" rabbitmq-diagnostics -q check_running
  as_pod "${rabbit_env[@]}" rabbitmq-diagnostics -q ping > /dev/null || fail "ping failed"
  local version
  version="$(as_pod "${rabbit_env[@]}" rabbitmqctl -q version)"
  say "rabbitmqctl version: $version"
  [ "$version" = "$EXPECTED_VERSION" ] || fail "expected RabbitMQ $EXPECTED_VERSION"
  for port in 5672 15672 15692; do
    as_pod "${rabbit_env[@]}" rabbitmq-diagnostics -q check_port_listener "$port" > /dev/null \
      || fail "nothing listens on $port"
  done
  as_pod "${rabbit_env[@]}" rabbitmqctl -q authenticate_user pipeline "$password" > /dev/null \
    || fail "the default user from RABBITMQ_DEFAULT_USER/PASS cannot log in"
  local plugins
  plugins="$(as_pod "${rabbit_env[@]}" rabbitmq-plugins -q list --enabled --minimal | paste -sd ' ' -)"
  say "enabled plugins: $plugins"
  case "$plugins" in
    *rabbitmq_management*rabbitmq_prometheus* | *rabbitmq_prometheus*rabbitmq_management*) ;;
    *) fail "management and prometheus are not both enabled" ;;
  esac
  grep -q 'Server startup complete' "$server_log" || fail "no startup line on the console (log.console)"
  verified "rabbitmq $EXPECTED_VERSION as $node: check_running and ping ok, listeners 5672/15672/15692, default user logs in, plugins: $plugins, logs on stdout"
  stop 60
}

check_cassandra_tools() {
  local version cqlsh_version
  version="$(as_pod cassandra -v)"
  say "cassandra -v: $version"
  [ "$version" = "$EXPECTED_VERSION" ] || fail "expected Cassandra $EXPECTED_VERSION"
  cqlsh_version="$(as_pod HOME=/tmp cqlsh --version)"
  say "cqlsh --version: $cqlsh_version"
  [ "$cqlsh_version" = "cqlsh $EXPECTED_CQLSH_VERSION" ] || fail "expected cqlsh $EXPECTED_CQLSH_VERSION"
  # What the operator's init container and credentials Job run, and a shell to debug with.
  as_pod bash -c 'for tool in bash sh awk grep cp mv mktemp seq sleep sed ip ps python3 java; do
      command -v "$tool" > /dev/null || { echo "missing: $tool" >&2; exit 1; }
    done' || fail "tools are missing"
  verified "cassandra -v: $version; cqlsh --version: $cqlsh_version; bash, awk, grep, cp, mv, mktemp, seq, sed, ip, ps, python3, java on PATH"
}

check_cassandra() {
  check_cassandra_tools
  # Cassandra resolves the local host name at startup.
  pod_identity cassandra-0 cassandra-0.cassandra-headless.image-check.svc
  # The init container: the image's configuration copied to an emptyDir (mounted here at /mnt)
  # with the authentication the operator turns on (the same key edit as its script).
  volume /mnt
  as_pod bash -c '
    set -euo pipefail
    cp -R /etc/cassandra/. /mnt/
    awk '\''
      replacing && /^[ \t]/ { next }
      { replacing = 0 }
      /^(authenticator|authorizer|role_manager)[ \t]*:/ {
        split($0, key, ":")
        value["authenticator"] = "PasswordAuthenticator"
        value["authorizer"] = "CassandraAuthorizer"
        value["role_manager"] = "CassandraRoleManager"
        print key[1] ": " value[key[1]]
        replacing = 1
        next
      }
      { print }
    '\'' /mnt/cassandra.yaml > /mnt/cassandra.yaml.new
    mv /mnt/cassandra.yaml.new /mnt/cassandra.yaml
    grep -E "^(authenticator|authorizer|role_manager):" /mnt/cassandra.yaml
  '
  umount "$root/mnt"
  # The main container: that emptyDir at /etc/cassandra, an emptyDir for the logs, the data volume.
  mount --bind "$work/volumes/mnt" "$root/etc/cassandra"
  volume /opt/cassandra/logs
  volume /var/lib/cassandra
  start cassandra.log CASSANDRA_CONF=/etc/cassandra MAX_HEAP_SIZE=1G HEAP_NEWSIZE=256M \
    POD_IP=127.0.0.1 cassandra -f
  # The credentials Job's first step.
  wait_until 400 "cqlsh logged in as cassandra" as_pod HOME=/tmp cqlsh -u cassandra -p cassandra \
    127.0.0.1 9042 -e 'select release_version from system.local'
  local answer
  answer="$(tr -s ' \n' ' ' < "$work/probe.out")"
  say "cqlsh printed: $answer"
  case "$answer" in
    *" $EXPECTED_VERSION "*) ;;
    *) fail "release_version is not $EXPECTED_VERSION" ;;
  esac
  # $server is the JVM itself: the launcher execs java. (This namespace's pids: its own /proc.)
  tr '\0' '\n' < "$root/proc/$server/cmdline" | grep -qx -- '-Xmx1G' \
    || fail "the JVM does not run with -Xmx1G"
  [ -s "$work/volumes/opt/cassandra/logs/system.log" ] || fail "no system.log in /opt/cassandra/logs"
  verified "cassandra $EXPECTED_VERSION with a 1G heap: cqlsh -u cassandra -p cassandra answered release_version $EXPECTED_VERSION (PasswordAuthenticator); system.log in /opt/cassandra/logs"
  stop 120
}

case "$check" in
  redis) check_redis ;;
  rabbitmq) check_rabbitmq ;;
  cassandra-tools) check_cassandra_tools ;;
  cassandra) check_cassandra ;;
  *) fail "unknown check $check" ;;
esac
