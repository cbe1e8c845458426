#!/bin/bash
# Runs a guest script as root under Debian's 6.12 kernel in a throwaway VM (qemu, TCG), where
# TCMU (configfs, target_core_user, tcm_loop), ublk, loop and FUSE are all available. The
# project's release binaries, the script and the test data are shared with the guest over 9p at
# /share; glibc and e2fsprogs come in the initramfs.
#   integration/vm/vm.sh GUEST_SCRIPT [TIMEOUT_SECONDS [ARGS...]]
# The guest runs GUEST_SCRIPT with ARGS; the scripts next to it are at /share/guest.
# Exits with the guest script's exit code; 124 if the VM did not finish in time (a failure).
# The kernel and initramfs are cached in $OBD_VM_CACHE (default target/vm).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
script=$(readlink -f "$1")
limit=${2:-600}
shift $(( $# < 2 ? $# : 2 ))
cache=${OBD_VM_CACHE:-$root/target/vm}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

# 1. packages (the machine ships qemu-utils from backports; install the bookworm set together)
if ! command -v qemu-system-x86_64 >/dev/null || ! [ -x /bin/busybox ] || ! command -v depmod >/dev/null || ! command -v xz >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades \
    qemu-system-x86 qemu-utils/bookworm qemu-system-common/bookworm busybox-static kmod e2fsprogs xz-utils >/dev/null
fi

# 2. the kernel: the newest Debian 6.12 image, unpacked (never installed)
mkdir -p "$cache"
if ! ls "$cache"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  find_pkg() { apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' | awk '{print $1}' | sort -V | tail -1; }
  pkg=$(find_pkg)
  [ -n "$pkg" ] || { $SUDO apt-get update -qq; pkg=$(find_pkg); }
  [ -n "$pkg" ] || { echo "no linux-image-6.12 package found (apt-get update?)"; exit 1; }
  rm -rf "$cache/kernel" "$cache/deb" && mkdir -p "$cache/deb"
  (cd "$cache/deb" && apt-get download "$pkg" >/dev/null)
  dpkg -x "$cache"/deb/*.deb "$cache/kernel"
fi
vmlinuz=$(ls "$cache"/kernel/boot/vmlinuz-* | head -1)
kver=${vmlinuz##*/vmlinuz-}

# 3. the initramfs: busybox, the modules' dependency closure, glibc and e2fsprogs
initrd=$cache/initrd-v2-$kver.gz
if [ ! -f "$initrd" ]; then
  st=$(mktemp -d)
  mkdir -p "$st"/{bin,sbin,proc,sys,dev,tmp,run,share,etc,lib/modules}
  cp /bin/busybox "$st/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$st/bin/$a"; done
  ln -sf ../bin/busybox "$st/sbin/modprobe"
  depmod -b "$cache/kernel" "$kver"
  mods="configfs target_core_mod target_core_user tcm_loop uio ublk_drv sd_mod 9pnet_virtio 9p ext4 loop fuse overlay crc32c_generic"
  for m in $(modprobe -a -d "$cache/kernel" -S "$kver" --show-depends $mods | awk '$1=="insmod"{print $2}'); do
    rel=${m#"$cache/kernel/"}
    mkdir -p "$st/$(dirname "$rel")"
    case $m in *.xz) xz -dc "$m" > "$st/${rel%.xz}" ;; *.zst) zstd -qdc "$m" > "$st/${rel%.zst}" ;; *) cp "$m" "$st/$rel" ;; esac
  done
  cp "$cache/kernel/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$st/lib/modules/$kver/" 2>/dev/null || true
  depmod -b "$st" "$kver"
  # glibc and the tools the guest tests use, at their host paths
  for b in /sbin/mkfs.ext4 /sbin/e2fsck /sbin/debugfs /usr/bin/sha256sum; do
    p=$(readlink -f "$b"); mkdir -p "$st$(dirname "$b")"; cp "$p" "$st$b"
    for l in $(ldd "$p" | grep -o '/[^ ]*'); do mkdir -p "$st$(dirname "$l")"; cp -L "$l" "$st$l"; done
  done
  for l in $(ldd "$root/target/release/overlaybd-attach" | grep -o '/[^ ]*'); do mkdir -p "$st$(dirname "$l")"; cp -L "$l" "$st$l"; done
  # runc's libseccomp (containerd, its shim, ctr and docker-registry need only libc)
  if command -v runc >/dev/null; then for l in $(ldd "$(command -v runc)" | grep -o '/[^ ]*'); do mkdir -p "$st$(dirname "$l")"; cp -L "$l" "$st$l"; done; fi
  cat > "$st/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp; mount -t tmpfs run /run
for m in crc32c_generic configfs target_core_user tcm_loop uio ublk_drv sd_mod 9pnet_virtio 9p ext4 loop fuse overlay; do modprobe $m 2>/dev/null; done
grep -q " /sys/kernel/config " /proc/mounts || mount -t configfs none /sys/kernel/config
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host0 /share
export PATH=/share/bin:/bin:/sbin:/usr/bin:/usr/sbin
echo OBD-VM-START
sh /share/guest.sh; rc=$?
echo "OBD-VM-RESULT $rc"
printf "\\$(printf %03o $rc)" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
poweroff -f
INIT
  chmod +x "$st/init"
  (cd "$st" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$initrd.tmp.$$") && mv "$initrd.tmp.$$" "$initrd"
  rm -rf "$st"
fi

# 4. the share: binaries, the guest script, test data
share=$(mktemp -d)
trap 'rm -rf "$share"' EXIT
mkdir -p "$share/bin"
cp "$root"/target/release/overlaybd-{attach,create,commit,zfile,dump,info} "$share/bin/"
# the snapshotter with containerd, runc and a registry from the host's packages, when built
if [ -x "$root/target/release/overlaybd-snapshotter" ] && command -v containerd >/dev/null; then
  cp "$root"/target/release/{overlaybd-snapshotter,cri-pull} "$share/bin/"
  for b in containerd ctr containerd-shim-runc-v2 runc docker-registry; do cp "$(readlink -f "$(command -v $b)")" "$share/bin/$b"; done
fi
{ printf 'set --'; printf ' %q' "$@"; printf '\n'; cat "$script"; } > "$share/guest.sh"
cp -r "$(dirname "$script")" "$share/guest"
cp -r "$root/backstore/tests/data/reference" "$share/reference"

# 5. boot; qemu exits with (rc << 1) | 1 through isa-debug-exit
set +e
timeout -k 10 "$limit" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m 1024 -smp 2 -M pc -nographic -no-reboot \
  -net none -kernel "$vmlinuz" -initrd "$initrd" -append "console=ttyS0 panic=-1 quiet" \
  -virtfs local,path="$share",mount_tag=host0,security_model=none,id=host0 \
  -device isa-debug-exit,iobase=0xf4,iosize=0x04
q=$?
set -e
if [ $q -eq 124 ] || [ $q -eq 137 ]; then echo "VM: no result within $limit s"; exit 124; fi
if [ $((q & 1)) -ne 1 ]; then echo "VM: qemu exited with $q without a guest result"; exit 125; fi
exit $((q >> 1))
