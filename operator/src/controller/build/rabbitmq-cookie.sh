# shellcheck shell=sh
# Puts the pipeline's Erlang cookie where RabbitMQ and its CLI tools read it, $HOME/.erlang.cookie,
# readable by its owner only (Erlang refuses a cookie file that others can read). Run as
# `sh -c` by the RabbitMQ pods' init container and by the queue-membership Job, with the
# image's sh, rm, cp and chmod. COOKIE_FILE is the Secret's file; HOME is writable.
set -eu
source_file="${COOKIE_FILE:?COOKIE_FILE must name the mounted cookie}"
target="${HOME:?HOME must be set}/.erlang.cookie"
# A cookie left by an earlier start is read-only (0400): replace it, never edit it.
rm -f "$target"
umask 077
cp "$source_file" "$target"
chmod 0400 "$target"
