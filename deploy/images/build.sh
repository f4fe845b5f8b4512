#!/usr/bin/env bash
# Build fedprag's two container images and smoke-test them; writes deploy/images/last-run.md.
#
#   fedprag-cluster:0.1.0   the query API and its replicas (Ray head and workers), the coordinator
#   fedprag-site:0.1.0      a data owner's site daemon
#
# No registry is needed: the base image is Debian bookworm (minbase) made by mmdebstrap and
# imported into podman; both images install the fedprag wheel and its dependencies' wheels, which
# the host resolves (CPU torch among them), in one offline pip resolve,
# and are built with `podman build --isolation chroot`. Each image is smoke-tested by running its
# own interpreter in a chroot of its root filesystem (podman run cannot set rlimits here):
# deploy/images/smoke.py. Needs root, mmdebstrap and podman (apt-get install mmdebstrap podman),
# and this checkout's .venv (./bootstrap.sh) to build the wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=deploy/images
context=$(mktemp -d /var/tmp/fedprag-images.XXXXXX)
report=$here/last-run.md
mounts=()
cleanup() {
  for root in "${mounts[@]}"; do
    for sub in dev/shm dev proc sys tmp; do umount "$root/$sub" 2>/dev/null || true; done
  done
  for image in fedprag-cluster:0.1.0 fedprag-site:0.1.0; do podman image unmount "$image" >/dev/null 2>&1 || true; done
  rm -rf "$context"
}
trap cleanup EXIT
for tool in mmdebstrap podman; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (apt-get install mmdebstrap podman)" >&2; exit 1; }
done
seconds() { local start=$SECONDS; "$@" >&2; echo $((SECONDS - start)); }

echo "build.sh: the Debian base (mmdebstrap, once)" >&2
base_s=0
if ! podman image exists localhost/fedprag-base:bookworm; then
  base_s=$(seconds bash -c "mmdebstrap --quiet --variant=minbase \
      --include=python3.11,python3.11-venv,ca-certificates,passwd bookworm '$context/base.tar' \
    && podman import '$context/base.tar' localhost/fedprag-base:bookworm && rm '$context/base.tar'")
fi

echo "build.sh: the wheels: fedprag, and the host's resolve of its pinned set (CPU torch)" >&2
mkdir -p "$context/wheels"
.venv/bin/pip wheel --quiet --no-deps --wheel-dir "$context/wheels" . 2> >(grep -v "is ignored" >&2)
.venv/bin/pip wheel --quiet --wheel-dir "$context/wheels" "$context/wheels/fedprag-0.1.0-py3-none-any.whl" \
  2> >(grep -v "is ignored" >&2)
ls "$context"/wheels/torch-2.13.0+cpu-*.whl >/dev/null  # the CPU build, never CUDA's

declare -A build_s size smoke
for image in cluster site; do
  echo "build.sh: fedprag-$image:0.1.0" >&2
  build_s[$image]=$(seconds podman build --isolation chroot --no-cache --quiet -f "$here/Dockerfile.$image" \
    -t "fedprag-$image:0.1.0" "$context")
  size[$image]=$(podman image inspect "fedprag-$image:0.1.0" --format '{{.Size}}')
done

for image in site cluster; do
  echo "build.sh: smoke test of fedprag-$image in a chroot" >&2
  root=$(podman image mount "fedprag-$image:0.1.0")
  mounts+=("$root")
  for sub in proc sys dev dev/shm tmp; do mkdir -p "$root/$sub"; done
  mount -t proc proc "$root/proc"; mount --rbind /sys "$root/sys"; mount --rbind /dev "$root/dev"
  mount -t tmpfs -o size=4g tmpfs "$root/tmp"
  install -D -m 0644 "$here/smoke.py" "$root/tmp/smoke.py"
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  smoke[$image]=$(chroot --userspec=1000:1000 "$root" /usr/bin/env -i HOME=/home/fedprag \
    PATH=/opt/fedprag/bin:/usr/bin:/bin HF_HUB_OFFLINE=1 /opt/fedprag/bin/python /tmp/smoke.py "$image" /tmp/work \
    | tail -1)
  echo "build.sh: $image: ${smoke[$image]}" >&2
done

{
  echo "# The last run of deploy/images/build.sh"
  echo
  echo "On $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), podman $(podman --version | cut -d' ' -f3)."
  echo
  echo "| image | size | build s | smoke test (in a chroot of the image) |"
  echo "|---|---|---|---|"
  for image in cluster site; do
    echo "| fedprag-$image:0.1.0 | $((size[$image] / 1000000)) MB | ${build_s[$image]} | \`${smoke[$image]}\` |"
  done
  echo
  echo "The Debian base took ${base_s} s (0: it was there already)."
} > "$report"
cat "$report"
