set -euo pipefail

host="${CASSANDRA_HOST:?CASSANDRA_HOST must name the Cassandra service}"
port="${CASSANDRA_PORT:-9042}"
superuser="${SUPERUSER_NAME:-cassandra}"
default_superuser_password="${DEFAULT_SUPERUSER_PASSWORD:-cassandra}"
superuser_password="${SUPERUSER_PASSWORD:?SUPERUSER_PASSWORD must be the new superuser password}"
role="${APP_ROLE:-pipeline}"
role_password="${APP_PASSWORD:?APP_PASSWORD must be the password of the application role}"
keyspace="${APP_KEYSPACE:?APP_KEYSPACE must name the accounts keyspace}"
replication_factor="${AUTH_REPLICATION_FACTOR:-1}"
attempts="${CONNECT_ATTEMPTS:-60}"
delay="${CONNECT_DELAY_SECONDS:-5}"

case "$keyspace" in
  '' | *[!A-Za-z0-9_]*) echo "APP_KEYSPACE '$keyspace' is not a plain CQL identifier" >&2; exit 1 ;;
esac
case "$replication_factor" in
  '' | *[!0-9]* | 0) echo "AUTH_REPLICATION_FACTOR '$replication_factor' is not a positive number" >&2; exit 1 ;;
esac

umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A CQL string literal.
literal() {
  local quote="'"
  printf "'%s'" "${1//$quote/$quote$quote}"
}

# cqlsh reads the password from a credentials file that only this user can read.
use_password() {
  printf '[plain_text_auth]\npassword = %s\n' "$1" > "$work/credentials"
}

cql() {
  cqlsh "$host" "$port" -u "$superuser" --credentials "$work/credentials" --no-color \
    --connect-timeout=10 --request-timeout=60 "$@"
}

# Runs one statement (from a file: it may hold a password). A failure is retried a few times
# (Cassandra refuses a role's password change within 5 s of the last, and schema changes can time
# out while nodes join); then the script stops.
run() {
  echo "$1"
  printf '%s\n' "$2" > "$work/statement.cql"
  local try
  for try in 1 2 3 4; do
    if cql -f "$work/statement.cql" > /dev/null; then
      return 0
    fi
    echo "  failed (try $try of 5), again in 6 s"
    sleep 6
  done
  cql -f "$work/statement.cql" > /dev/null
}

echo "waiting for CQL at $host:$port as $superuser"
logged_in=""
error=""
for attempt in $(seq 1 "$attempts"); do
  for candidate in "$superuser_password" "$default_superuser_password"; do
    use_password "$candidate"
    if error="$(cql -e 'SELECT release_version FROM system.local' 2>&1 > /dev/null)"; then
      logged_in="$candidate"
      break 2
    fi
  done
  echo "attempt $attempt/$attempts: no login as $superuser at $host:$port with either password yet: ${error##*$'\n'}"
  if [ "$attempt" -lt "$attempts" ]; then
    sleep "$delay"
  fi
done
if [ -z "$logged_in" ]; then
  echo "giving up after $attempts attempts" >&2
  exit 1
fi
if [ "$logged_in" = "$superuser_password" ]; then
  echo "logged in with the generated superuser password (an earlier run set it)"
else
  echo "logged in with the default superuser password"
fi

# The cluster's one datacenter, as its snitch names it (dc1 in the image, datacenter1 elsewhere).
datacenter="$(cql -e 'SELECT data_center FROM system.local' \
  | awk 'found == 1 { sub(/^[ \t]+/, ""); sub(/[ \t]+$/, ""); print; found = 2 } /^-+$/ && !found { found = 1 }')"
if [ -z "$datacenter" ]; then
  echo "cannot read the datacenter's name from system.local" >&2
  exit 1
fi

run "system_auth: $replication_factor replica(s) in datacenter $datacenter" \
  "ALTER KEYSPACE system_auth WITH replication = {'class': 'NetworkTopologyStrategy', $(literal "$datacenter"): $replication_factor};"
echo "system_auth: reading the role tables at CONSISTENCY ALL (repairs rows written before)"
for table in roles role_members role_permissions; do
  printf 'CONSISTENCY ALL;\nSELECT * FROM system_auth.%s;\n' "$table" > "$work/statement.cql"
  cql -f "$work/statement.cql" > /dev/null
done

run "role $role: created unless it exists" \
  "CREATE ROLE IF NOT EXISTS $(literal "$role") WITH PASSWORD = $(literal "$role_password") AND LOGIN = true;"
run "role $role: may log in, is no superuser" \
  "ALTER ROLE $(literal "$role") WITH LOGIN = true AND SUPERUSER = false;"
run "role $role: may create keyspaces and tables" \
  "GRANT CREATE ON ALL KEYSPACES TO $(literal "$role");"
existing="$(cql -e "SELECT keyspace_name FROM system_schema.keyspaces WHERE keyspace_name = $(literal "${keyspace,,}");")"
case "$existing" in
  *'(1 rows)'*)
    run "role $role: may read keyspace $keyspace" "GRANT SELECT ON KEYSPACE $keyspace TO $(literal "$role");"
    run "role $role: may write keyspace $keyspace" "GRANT MODIFY ON KEYSPACE $keyspace TO $(literal "$role");"
    ;;
  *)
    echo "keyspace $keyspace does not exist yet: $role gets every permission on it by creating it"
    ;;
esac
# The role's own login comes after its grants: a session of the role loads the node's permission
# cache, which would then hold the permissions from before the grants for permissions_validity
# (2 s by default): a gateway logging in at once was refused CREATE (seen on a fresh Cassandra).
# The Secret is the truth, but a password is only changed when it differs: every change is
# rate-limited.
printf '[plain_text_auth]\npassword = %s\n' "$role_password" > "$work/role-credentials"
if cqlsh "$host" "$port" -u "$role" --credentials "$work/role-credentials" --no-color \
  --connect-timeout=10 -e 'SELECT release_version FROM system.local' > /dev/null 2>&1; then
  echo "role $role: logs in with the password from the Secret"
else
  run "role $role: the password from the Secret" \
    "ALTER ROLE $(literal "$role") WITH PASSWORD = $(literal "$role_password");"
fi

if [ "$logged_in" = "$superuser_password" ]; then
  echo "superuser $superuser: has the generated password already"
else
  run "superuser $superuser: the generated password" \
    "ALTER ROLE $(literal "$superuser") WITH PASSWORD = $(literal "$superuser_password");"
fi
echo "credentials are set up"
