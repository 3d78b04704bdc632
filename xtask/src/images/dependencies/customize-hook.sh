#!/bin/sh
# mmdebstrap --customize-hook of the {{IMAGE}} stand-in image: runs with the root filesystem as
# $1, after every package is installed. Rendered by `cargo xtask images --dependencies` from
# xtask/src/images/dependencies/customize-hook.sh.
set -eu
root="$1"

# uid and gid 999 are the image's user alone: the files of its packages and its writable paths
# belong to the pods' user, and no other account shares it.
users="$(awk -F: '$3 == 999 { print $1 }' "$root/etc/passwd")"
groups="$(awk -F: '$3 == 999 { print $1 }' "$root/etc/group")"
if [ "$users" != '{{USER}}' ] || [ "$groups" != '{{USER}}' ]; then
  echo "uid/gid 999 must be {{USER}} alone; passwd has '$users', group has '$groups'" >&2
  exit 1
fi

# What the pods write to (volumes or emptyDirs mount over most of them; owned by 999 so the
# image also works without).
for dir in {{WRITABLE_DIRS}}; do
  mkdir -p "$root$dir"
  chown 999:999 "$root$dir"
  chmod 0755 "$root$dir"
done

# Made per container by the runtime; what the build machine had does not belong in the image.
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
: > "$root/etc/resolv.conf"
: > "$root/etc/hostname"
# Secrets of the build: a cookie baked into the image would be shared by every container made
# from it (the RabbitMQ package makes one at install time).
for path in {{REMOVE}}; do
  rm -rf "$root$path"
done
# The build's own logs and backups.
rm -rf "$root"/var/log/apt/* "$root/var/log/dpkg.log" "$root/var/log/alternatives.log" \
  "$root"/var/cache/debconf/*-old
