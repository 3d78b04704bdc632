#!/bin/sh
# cqlsh {{CQLSH_VERSION}} from PyPI, unpacked into {{CQLSH_DIR}} for the image's own python3 by
# `cargo xtask images --dependencies` (xtask/src/images/dependencies/cqlsh.sh). It keeps its
# history and settings in $HOME/.cassandra: give it a writable HOME (the Job sets HOME=/tmp).
PYTHONPATH="{{CQLSH_DIR}}${PYTHONPATH:+:$PYTHONPATH}" exec python3 -s -m cqlshlib "$@"
