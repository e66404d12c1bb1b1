#!/bin/sh
# Builds the reuselb image (deploy/container/Containerfile) with podman, from a reuselb binary and
# a shim built on this machine:
#
#   deploy/container/build-image.sh REUSELB SHIM TAG
#
# It stages the image's files in a temporary directory (the build context): reuselb, the shared
# libraries `ldd` lists for it, the shim and the demo app, and `cp` with its libraries (app pods'
# init containers copy the shim out of the image with it). The image is FROM scratch: no base
# image is pulled. `cargo xtask image` builds reuselb and calls this; the container test calls it
# with the binaries under test.
set -eu

if [ $# -ne 3 ]; then
    echo "usage: $0 REUSELB SHIM TAG" >&2
    exit 2
fi
reuselb=$1
shim=$2
tag=$3
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
for f in "$reuselb" "$shim"; do
    [ -f "$f" ] || { echo "$0: $f: no such file (build with cargo xtask build)" >&2; exit 1; }
done
command -v podman >/dev/null || { echo "$0: podman is not installed (cargo xtask setup installs it)" >&2; exit 1; }

context=$(mktemp -d "${TMPDIR:-/tmp}/reuselb-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs

install -D -m 0755 "$reuselb" "$rootfs/usr/local/bin/reuselb"
install -D -m 0644 "$shim" "$rootfs/usr/local/lib/reuselb/libbalancer_shim.so"
install -D -m 0644 "$repo/deploy/examples/demo/demo_app.py" "$rootfs/usr/local/share/reuselb/demo_app.py"
install -D -m 0755 "$(command -v cp)" "$rootfs/bin/cp"

# Every library the two executables load, at the path the dynamic loader looks for it (the
# loader itself included: its path is the one written in the executables).
libraries() {
    ldd "$1" | awk '/=> \// { print $3 } /^\t\// { print $1 }'
}
for lib in $( { libraries "$reuselb"; libraries "$rootfs/bin/cp"; } | sort -u); do
    install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done

podman build --quiet --file "$here/Containerfile" --tag "$tag" "$context"
echo "built $tag:"
find "$rootfs" -type f -printf '  /%P\n' | sort
