#!/bin/bash
# Starts Apache Cassandra {{VERSION}} in the foreground: the stand-in image's `cassandra`.
#
# Rendered by `cargo xtask images --dependencies` from xtask/src/images/dependencies/cassandra.sh,
# with the JVM flags and main class of the project's own Cassandra (xtask/src/env/cassandra.rs):
# Maven Central's jars have no bin/cassandra or cassandra-env.sh, so this is their launcher.
#
# It honours what the official image's scripts read: CASSANDRA_CONF (default /etc/cassandra),
# CASSANDRA_HOME (/opt/cassandra), CASSANDRA_LOG_DIR ($CASSANDRA_HOME/logs), MAX_HEAP_SIZE
# (-Xms and -Xmx, default {{DEFAULT_HEAP}}), HEAP_NEWSIZE (-Xmn, when set), JMX_PORT (7199, on
# loopback only, for NodeTool), JVM_EXTRA_OPTS (more JVM flags, split on whitespace) and JAVA_HOME.
# Data lives under /var/lib/cassandra. The JVM writes nothing but there, the log directory and
# /tmp, so the root filesystem may be read-only. It is exec'd: signals reach Cassandra itself.
set -euo pipefail

usage() {
  echo "usage: cassandra [-f] [-R] [-v] [-p pidfile] [-E errorfile] [-D name=value]... [-h]"
  echo "  -f  foreground (the only mode: Cassandra always runs in the foreground here)"
  echo "  -R  allow running as root"
  echo "  -v  print the version and exit"
}

allow_root=no
pid_file=""
error_file="/tmp/hs_err_pid%p.log"
properties=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    -f) shift ;;
    -R) allow_root=yes; shift ;;
    -v) print_version=yes; shift ;;
    -p) pid_file="${2:?cassandra: -p needs a file}"; shift 2 ;;
    -E) error_file="${2:?cassandra: -E needs a file}"; shift 2 ;;
    -D) properties+=("-D${2:?cassandra: -D needs name=value}"); shift 2 ;;
    -D*) properties+=("$1"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "cassandra: unknown option '$1'" >&2; usage >&2; exit 1 ;;
  esac
done

home="${CASSANDRA_HOME:-/opt/cassandra}"
conf="${CASSANDRA_CONF:-/etc/cassandra}"
log_dir="${CASSANDRA_LOG_DIR:-$home/logs}"
java="${JAVA_HOME:+$JAVA_HOME/bin/}java"

if [ "${print_version:-no}" = yes ]; then
  exec "$java" -cp "$home/lib/*" org.apache.cassandra.tools.GetVersion
fi

if [ "$(id -u)" = 0 ] && [ "$allow_root" != yes ]; then
  echo "cassandra: running as root is not allowed (pass -R to allow it)" >&2
  exit 1
fi

# A size as the JVM reads it: digits and an optional unit.
heap_size() {
  case "$2" in
    '' | *[!0-9kKmMgG]* | [!0-9]* | *[kKmMgG]?*)
      echo "cassandra: $1='$2' is not a size such as 1024M or 1G" >&2
      exit 1 ;;
  esac
}
max_heap="${MAX_HEAP_SIZE:-{{DEFAULT_HEAP}}}"
heap_size MAX_HEAP_SIZE "$max_heap"
jvm=("-Xms$max_heap" "-Xmx$max_heap")
if [ -n "${HEAP_NEWSIZE:-}" ]; then
  heap_size HEAP_NEWSIZE "$HEAP_NEWSIZE"
  jvm+=("-Xmn$HEAP_NEWSIZE")
fi

jvm+=(
{{SERVER_JVM_FLAGS}}
{{JAVA17_MODULE_FLAGS}}
  # Crash reports to the writable /tmp, performance counters in memory rather than a file, and
  # JNA's native library unpacked to /tmp: the root filesystem is read-only.
  "-XX:ErrorFile=$error_file"
  -XX:+PerfDisableSharedMem
  -Djna.tmpdir=/tmp
  # Keeps stdout and stderr open: they are the container's log.
  -Dcassandra-foreground=yes
  "-Dcassandra.config=file://$conf/cassandra.yaml"
  "-Dlogback.configurationFile=$conf/logback.xml"
  "-Dcassandra.logdir=$log_dir"
  -Dcassandra.storagedir=/var/lib/cassandra
  "-Dcassandra.triggers_dir=$home/triggers"
  # JMX on loopback only (as upstream's LOCAL_JMX=yes), on one fixed port: nodetool in the same
  # jars (java -cp "$CASSANDRA_HOME/lib/*" org.apache.cassandra.tools.NodeTool) can inspect the node.
  "-Dcassandra.jmx.local.port=${JMX_PORT:-7199}"
  "-Dcom.sun.management.jmxremote.rmi.port=${JMX_PORT:-7199}"
)
read -r -a extra <<< "${JVM_EXTRA_OPTS:-}"
jvm+=("${extra[@]}" "${properties[@]}")

if [ -n "$pid_file" ]; then
  # exec keeps the pid: this shell's is the JVM's.
  echo "$$" > "$pid_file"
fi
# glibc's default of up to eight malloc arenas per core inflates a many-threaded JVM's resident
# memory; cassandra-env.sh sets the same.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-4}"
# The configuration directory first on the classpath, as Cassandra's own bin/cassandra.in.sh
# puts it: GossipingPropertyFileSnitch reads cassandra-rackdc.properties as a classpath resource.
exec "$java" "${jvm[@]}" -cp "$conf:$home/lib/*" {{MAIN_CLASS}}
