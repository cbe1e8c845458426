#!/bin/bash
# Installs what the tools and tests need on a fresh Debian machine (idempotent; run as root or
# with sudo available): e2fsprogs (debugfs, mkfs.ext4), libext2fs-dev (userspace ext4 editing),
# libclang (to build the libublk and libext2fs bindings), pkg-config, protoc (gRPC code generation), docker-registry,
# containerd, runc and skopeo (tests),
# python3 with the zstandard and lz4 modules (for the independent reader obd_inspect.py), and the
# Rust toolchain's fmt/clippy. The VM tests install qemu and fetch their kernel themselves.
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
need_apt=()
command -v debugfs >/dev/null 2>&1 || [ -x /usr/sbin/debugfs ] || [ -x /sbin/debugfs ] || need_apt+=(e2fsprogs)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
command -v tar >/dev/null 2>&1 || need_apt+=(tar)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# libublk's bindings are generated with bindgen, which needs libclang
dpkg -s libclang-dev >/dev/null 2>&1 || need_apt+=(libclang-dev)
# the ext2fs crate binds the system libext2fs (found with pkg-config)
dpkg -s libext2fs-dev >/dev/null 2>&1 || need_apt+=(libext2fs-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# the remote-layer tests run a real registry
command -v docker-registry >/dev/null 2>&1 || need_apt+=(docker-registry)
# the snapshotter's end-to-end tests run a real containerd and runc, and push images with skopeo
command -v containerd >/dev/null 2>&1 || need_apt+=(containerd)
command -v runc >/dev/null 2>&1 || need_apt+=(runc)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
# the test images are built from busybox-static
[ -x /bin/busybox ] || need_apt+=(busybox-static)
# the snapshotter's gRPC service is generated from containerd's protos at build time
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# the convertor's shared dedup store is tested against a MariaDB server the test starts
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
# ctr-obd record-trace: the reference's CNI bridge network for the recorded container
dpkg -s containernetworking-plugins >/dev/null 2>&1 || need_apt+=(containernetworking-plugins)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
if ! python3 -c 'import zstandard, lz4' 2>/dev/null; then
  python3 -m pip install -q zstandard lz4 2>/dev/null || python3 -m pip install -q --break-system-packages zstandard lz4
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
