"""Unpacks wheels into a directory for the image's own python3, then byte-compiles them.

Run inside the stand-in Cassandra image's root filesystem by `cargo xtask images --dependencies`
(xtask/src/images/dependencies/install-wheels.py): usage `python3 install-wheels.py TARGET WHEEL...`.
The wheels were chosen by pip for this Python and platform; a wheel is a zip whose top level is
what belongs on sys.path, so unpacking is the installation (scripts are not needed: the image's
`cqlsh` runs the module).
"""

import compileall
import sys
import zipfile


def main() -> int:
    target, wheels = sys.argv[1], sys.argv[2:]
    if not wheels:
        print("no wheels given", file=sys.stderr)
        return 1
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            data = [name for name in archive.namelist() if name.split("/")[0].endswith(".data")]
            if data:
                print(f"{wheel}: .data directories are not supported: {data[:3]}", file=sys.stderr)
                return 1
            archive.extractall(target)
    # The image's file system is read-only at run time: compile now, or on every start.
    return 0 if compileall.compile_dir(target, quiet=1) else 1


if __name__ == "__main__":
    sys.exit(main())
