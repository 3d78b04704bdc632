#!/bin/sh
# mmdebstrap --essential-hook of the {{IMAGE}} stand-in image: runs with the root filesystem as $1,
# after the Essential:yes packages are installed and before the rest. Rendered by
# `cargo xtask images --dependencies` from xtask/src/images/dependencies/essential-hook.sh.
set -eu
root="$1"

# The image's user gets uid and gid 999, what the operator's pods run as. It exists before the
# packages that want it are installed, so their maintainer scripts (adduser --system) adopt it
# instead of picking a free system uid, and the files they chown belong to 999.
if ! grep -q '^{{USER}}:' "$root/etc/passwd"; then
  echo '{{USER}}:x:999:999:{{GECOS}}:{{HOME}}:/usr/sbin/nologin' >> "$root/etc/passwd"
fi
if ! grep -q '^{{USER}}:' "$root/etc/group"; then
  echo '{{USER}}:x:999:' >> "$root/etc/group"
fi

# Maintainer scripts register man pages as update-alternatives links (openjdk's does), which
# fails when the directory is missing because dpkg excludes man pages here.
mkdir -p "$root/usr/share/man/man1"
