#!/usr/bin/env bash
# Build lucidd's container image from Debian packages alone (no container registry needed):
#   1. localhost/lucidd-base:bookworm, a Debian 12 minbase root filesystem made by debootstrap
#      with python3 (3.11), python3-venv and the CA certificates, imported with `podman import`
#      (once; kept in podman's storage);
#   2. container/Containerfile on top of it, tagged localhost/lucidd:<content hash> and
#      localhost/lucidd:latest; skipped when the tag of the current sources already exists.
# Prints the image's name (localhost/lucidd:<hash>) on stdout as its last line; exits 3 when
# podman cannot run a container here (the tests then skip).
#
# Needs root, podman, buildah and debootstrap (apt-get install podman buildah debootstrap),
# and a Debian mirror (MIRROR) and PyPI reachable. Environment: MIRROR, SUITE, BASE, REBUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}
BASE=${BASE:-localhost/lucidd-base:$SUITE}
PYTHON=${PYTHON:-python3}  # the host's, with pip: it builds the wheels
# buildah's RUN steps in a chroot (no OCI runtime, no cgroups needed; the host's network for
# pip) and rlimits below the host's own: a VM without CAP_SYS_RESOURCE cannot raise them.
LIMITS=(--ulimit "nofile=4096:4096" --ulimit "nproc=4096:4096")
BUILD_FLAGS=(--isolation chroot "${LIMITS[@]}")
# runc, not crun: crun refuses a host with cgroups v1 and v2 mounted side by side ("hybrid").
RUN_FLAGS=(--runtime "${RUNTIME:-runc}" "${LIMITS[@]}")

if ! podman image exists "$BASE"; then
    rootfs=$(mktemp -d /var/tmp/lucidd-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "build.sh: debootstrap $SUITE into $rootfs" >&2
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$MIRROR" >&2
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -c . | podman import - "$BASE" >&2
    rm -rf "$rootfs"
    trap - EXIT
fi

# The content hash: the sources that go into the image and the recipe itself.
hash=$( (git ls-files -s pyproject.toml README.md LICENSE lucidd container; \
         podman image inspect --format '{{.Id}}' "$BASE") | sha256sum | cut -c1-16)
image=localhost/lucidd:$hash
if [[ -n $(git status --porcelain -- pyproject.toml lucidd container) ]]; then
    # Uncommitted changes: hash the files themselves.
    hash=$( (git ls-files -co --exclude-standard pyproject.toml README.md LICENSE lucidd container \
             | xargs sha256sum; podman image inspect --format '{{.Id}}' "$BASE") \
            | sha256sum | cut -c1-16)
    image=localhost/lucidd:$hash
fi

if [[ ${REBUILD:-0} == 1 ]] || ! podman image exists "$image"; then
    # The wheels, built here by the host's pip (which knows this host's index and CA): the image's
    # build then needs no network. They are cp311 wheels: the base's python3 is 3.11 too.
    # Also the probe that podman can run a container here at all: exit 3 if not.
    if ! base_python=$(podman run --rm --network none "${RUN_FLAGS[@]}" "$BASE" python3 -c \
        'import sys; print("%d.%d" % sys.version_info[:2])'); then
        echo "build.sh: podman cannot run a container from $BASE (flags: ${RUN_FLAGS[*]})" >&2
        exit 3
    fi
    host_python=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [[ $base_python != "$host_python" ]]; then
        echo "build.sh: the base has Python $base_python, this host $host_python: wheels would not fit" >&2
        exit 1
    fi
    rm -rf container/.wheels
    "$PYTHON" -m pip wheel -q --wheel-dir container/.wheels . >&2

    buildah bud "${BUILD_FLAGS[@]}" --format docker --layers=false \
        --build-arg "BASE=$BASE" -f container/Containerfile -t "$image" . >&2
    podman tag "$image" localhost/lucidd:latest
    # Older builds of other sources would pile up (about 110 MB each): keep this one only.
    podman images --format '{{.Repository}}:{{.Tag}}' localhost/lucidd \
        | grep -v -e ":$hash\$" -e ':latest$' | xargs -r podman rmi >&2 || true
fi
echo "$image"
