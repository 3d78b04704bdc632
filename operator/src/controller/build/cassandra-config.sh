set -euo pipefail

image_config="${IMAGE_CONFIG_DIR:?IMAGE_CONFIG_DIR must name the configuration directory of the image}"
config="${CONFIG_DIR:?CONFIG_DIR must name the directory Cassandra reads its configuration from}"
pod_ip="${POD_IP:?POD_IP must be the address of this pod}"
seeds="${SEEDS:?SEEDS must list the seed nodes, comma-separated}"
cluster_name="${CLUSTER_NAME:?CLUSTER_NAME must name the Cassandra cluster}"
yaml="$config/cassandra.yaml"

# The values go into YAML as they are: refuse anything that would need quoting.
case "$pod_ip" in
  *[!0-9A-Fa-f.:]*) echo "POD_IP '$pod_ip' is not an IP address" >&2; exit 1 ;;
esac
case "$seeds" in
  *[!A-Za-z0-9.,:_-]*) echo "SEEDS '$seeds' is not a comma-separated list of hosts" >&2; exit 1 ;;
esac
case "$cluster_name" in
  *[!A-Za-z0-9._-]*) echo "CLUSTER_NAME '$cluster_name' may only have letters, digits, '.', '_' and '-'" >&2; exit 1 ;;
esac

# Each top-level key with its whole value, as it is to stand in cassandra.yaml.
settings=(
  "cluster_name: '$cluster_name'"
  "seed_provider:"
  "  - class_name: org.apache.cassandra.locator.SimpleSeedProvider"
  "    parameters:"
  "      - seeds: \"$seeds\""
  "endpoint_snitch: GossipingPropertyFileSnitch"
  "listen_address: $pod_ip"
  "broadcast_address: $pod_ip"
  "rpc_address: 0.0.0.0"
  "broadcast_rpc_address: $pod_ip"
  "authenticator: PasswordAuthenticator"
  "authorizer: CassandraAuthorizer"
  "role_manager: CassandraRoleManager"
)
# Keys that contradict the settings: Cassandra refuses an interface next to an address.
removed="listen_interface rpc_interface"

if [ ! -f "$image_config/cassandra.yaml" ]; then
  echo "$image_config/cassandra.yaml does not exist: is this a Cassandra image?" >&2
  exit 1
fi

# Always from the image, so a restarted pod never builds on an earlier start's edits.
cp -R "$image_config/." "$config/"
echo "copied $image_config to $config"

# A setting replaces its top-level key's whole value: the rest of the key's line and every
# following line that is indented or a list item at the margin (`- class_name: ...`). Comments
# at the margin and blank lines stay. A key that occurs twice keeps only its first place; a
# missing one is appended. A removed key goes with its value.
SETTINGS="$(printf '%s\n' "${settings[@]}")" REMOVED="$removed" awk '
function key_of(line) {
  sub(/[ \t]*:.*/, "", line)
  return line
}
BEGIN {
  count = split(ENVIRON["SETTINGS"], lines, "\n")
  keys = 0
  for (i = 1; i <= count; i++) {
    if (lines[i] ~ /^[^ \t]/) {
      key = key_of(lines[i])
      order[++keys] = key
      text[key] = lines[i]
    } else {
      text[key] = text[key] "\n" lines[i]
    }
  }
  count = split(ENVIRON["REMOVED"], names, " ")
  for (i = 1; i <= count; i++) {
    removed[names[i]] = 1
  }
}
replacing && /^[ \t]*$/ { print; next }
replacing && /^#/ { print; next }
replacing && /^([ \t]|-([ \t]|$))/ { next }
{
  replacing = 0
  if ($0 ~ /^[A-Za-z0-9_]+[ \t]*:([ \t]|$)/) {
    key = key_of($0)
    if (key in text) {
      if (!(key in written)) {
        print text[key]
        written[key] = 1
      }
      replacing = 1
      next
    }
    if (key in removed) {
      replacing = 1
      next
    }
  }
  print
}
END {
  for (i = 1; i <= keys; i++) {
    if (!(order[i] in written)) {
      print text[order[i]]
    }
  }
}
' "$yaml" > "$yaml.new"
mv "$yaml.new" "$yaml"

for line in "${settings[@]}"; do
  case "$line" in
    [!\ ]*)
      key="${line%%:*}"
      occurrences="$(grep -c "^${key}[[:space:]]*:" "$yaml" || true)"
      if [ "$occurrences" != 1 ]; then
        echo "$yaml: expected exactly one '$key', found $occurrences line(s) for the key" >&2
        exit 1
      fi
      ;;
  esac
  if ! grep -qxF -- "$line" "$yaml"; then
    echo "$yaml: expected the line '$line'" >&2
    exit 1
  fi
  echo "$yaml: $line"
done
for key in $removed; do
  if grep -q "^${key}[[:space:]]*:" "$yaml"; then
    echo "$yaml: '$key' is still set" >&2
    exit 1
  fi
done
