# Test layers and measures shared by the benchmarks (sourced).
#
# make_layers DIR BASE_MB writes DIR/base.tar and DIR/sparse.tar. The base layer is a sample of
# this machine's /usr, /etc and /var/lib/dpkg with the file-size mix of a distribution base layer
# (many small files, some large ones): files are taken in a fixed pseudo-random order until
# BASE_MB, with their parent directories. The sparse layer holds 4 x 288 MiB files, mostly zeros
# (about 1.15 GB of tar).
make_layers() {
python3 - "$2" > "$1/list" <<'PY'
import hashlib, os, sys
limit, total, picked = int(sys.argv[1]) << 20, 0, set()
files = []
for top in ("usr", "etc", "var/lib/dpkg"):
    for d, dirs, names in os.walk("/" + top):
        dirs.sort()
        for n in sorted(names):
            p = os.path.join(d, n)[1:]
            if os.path.islink("/" + p) or os.path.isfile("/" + p):
                files.append(p)
files.sort(key=lambda p: hashlib.sha256(p.encode()).digest())
for p in files:
    try:
        total += os.lstat("/" + p).st_size
    except OSError:
        continue
    picked.add(p)
    d = os.path.dirname(p)
    while d and d not in picked:
        picked.add(d)
        d = os.path.dirname(d)
    if total > limit:
        break
print("\n".join(sorted(picked)))
PY
tar -cf "$1/base.tar" -C / --no-recursion -T "$1/list" 2>/dev/null || true
mkdir -p "$1/sparse"
python3 - "$1/sparse" <<'PY'
import os, sys
for i in range(4):
    with open(os.path.join(sys.argv[1], f"disk{i}.img"), "wb") as f:
        f.truncate(288 << 20)
        for k in range(0, 288, 16):
            f.seek(k << 20)
            f.write(os.urandom(256 << 10))
PY
tar -cf "$1/sparse.tar" -C "$1" sparse
rm -rf "$1/sparse"
}

# ceiling W TAR_ARGS...: seconds to unpack with `tar TAR_ARGS... -C mnt` onto a fresh ext4 on a
# loop device in W, synced and unmounted, from a cold page cache (needs root).
ceiling() {
  local w=$1; shift
  truncate -s 64G "$w/raw.img"
  mkfs.ext4 -q -F "$w/raw.img"
  mkdir -p "$w/mnt" && mount -o loop "$w/raw.img" "$w/mnt"
  sync; echo 3 > /proc/sys/vm/drop_caches
  local s=$(date +%s.%N)
  tar "$@" -C "$w/mnt"
  sync -f "$w/mnt"
  umount "$w/mnt"
  local e=$(date +%s.%N)
  rm -f "$w/raw.img"
  python3 -c "print($e - $s)"
}

# median: the median of the numbers on stdin, one per line.
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
