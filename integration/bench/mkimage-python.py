#!/usr/bin/env python3
"""A realistic image for the cold-start benchmark: a Python runtime from this machine's Debian
packages, written as an OCI image layout without network. It takes the place of the stargz-peer
harness's tools/mkimage.py (same command line and output), so the harness runs unchanged.

  mkimage-python.py OUTDIR [--data-mb N] [--files N] [--tag orig] [--busybox /bin/busybox]

Layer 1 (base): busybox as /bin/sh and its applets, and the files of the shared-library
packages the runtime needs (libc6, zlib1g, libssl3, libffi8, libsqlite3-0, ...).
Layer 2 (runtime): python3.11-minimal, libpython3.11-minimal, libpython3.11-stdlib, with the
byte-compiled __pycache__ files Debian generated on this machine (all of /usr/lib/python3.11).
Layer 3 (application dependencies): /usr/lib/python3/dist-packages, of which a start-up imports
a few packages. The workload (--cmd of the harness), for example:
  python3 -c 'import json, asyncio, http.server, sqlite3, email.parser, decimal, yaml, pygments.lexers, jwt'
reads a few hundred small files scattered over layers 2 and 3, as a real runtime start does.
--data-mb and --files are accepted for compatibility and ignored; /etc/hello.txt exists, so the
harness's default command works too. Layers are tar+gzip (level 6, as docker writes them).
"""
import argparse, gzip, hashlib, io, json, os, subprocess, tarfile, time

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--data-mb", type=int, default=0)
p.add_argument("--files", type=int, default=0)
p.add_argument("--tag", default="orig")
p.add_argument("--busybox", default="/bin/busybox")
a = p.parse_args()

MTIME = 1700000000
BASE_PKGS = ["libc6", "zlib1g", "libexpat1", "libssl3", "libffi8", "libsqlite3-0", "libbz2-1.0", "liblzma5",
             "libuuid1", "libncursesw6", "libtinfo6", "libreadline8", "libcrypt1", "libgdbm6", "libdb5.3",
             "libnsl2", "libtirpc3", "libyaml-0-2", "libgcc-s1", "libstdc++6", "media-types", "tzdata"]
RUNTIME_PKGS = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib"]
SKIP = ("_sandboxing",)  # this machine's own start-up hooks are not part of an image

blobs = os.path.join(a.out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)


def put_blob(data: bytes):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)


class Layer:
    def __init__(self):
        self.tmp = os.path.join(a.out, ".layer.tar")
        self.f = open(self.tmp, "w+b")
        self.t = tarfile.open(fileobj=self.f, mode="w", format=tarfile.PAX_FORMAT)
        self.seen = set()

    def _ti(self, name, typ, mode, size=0, link=""):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.size, ti.linkname, ti.mtime = typ, mode, size, link, MTIME
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    def _parents(self, name):
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            self.dir("/".join(parts[:i]))

    def dir(self, name, mode=0o755):
        name = name.strip("/")
        if name and name not in self.seen:
            self.seen.add(name)
            self._parents(name)
            self.t.addfile(self._ti(name + "/", tarfile.DIRTYPE, mode))

    def file(self, name, data=None, path=None, mode=0o644):
        name = name.strip("/")
        if name in self.seen:
            return
        self._parents(name)
        self.seen.add(name)
        if path is not None:
            with open(path, "rb") as src:
                self.t.addfile(self._ti(name, tarfile.REGTYPE, mode, os.path.getsize(path)), src)
        else:
            self.t.addfile(self._ti(name, tarfile.REGTYPE, mode, len(data)), io.BytesIO(data))

    def symlink(self, name, target):
        name = name.strip("/")
        if name in self.seen:
            return
        self._parents(name)
        self.seen.add(name)
        self.t.addfile(self._ti(name, tarfile.SYMTYPE, 0o777, link=target))

    def host_path(self, path):
        """`path` of this machine as it is: a directory, symlink or regular file (under /usr
        when dpkg names it by its merged-/usr alias)."""
        if any(s in path for s in SKIP):
            return
        name = path
        for alias in ("/lib/", "/lib64/", "/sbin/"):
            if path.startswith(alias):
                name = "/usr" + path
        if path.rstrip("/") in ("/lib", "/lib64", "/sbin"):
            return
        if os.path.islink(path):
            self.symlink(name, os.readlink(path))
        elif os.path.isdir(path):
            self.dir(name, os.stat(path).st_mode & 0o7777)
        elif os.path.isfile(path):
            self.file(name, path=path, mode=os.stat(path).st_mode & 0o7777)

    def host_tree(self, root):
        for d, dirs, files in os.walk(root):
            dirs.sort()
            self.host_path(d)
            for n in sorted(files) + sorted(x for x in dirs if os.path.islink(os.path.join(d, x))):
                self.host_path(os.path.join(d, n))

    def packages(self, pkgs):
        for pkg in pkgs:
            out = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"mkimage-python.py: package {pkg} is not installed (apt-get install {pkg})")
            for path in out.stdout.split("\n"):
                if path.startswith("/") and path != "/." and not path.startswith("/usr/share/doc"):
                    self.host_path(path)

    def finish(self):
        self.t.close()
        self.f.seek(0)
        diff = hashlib.sha256()
        gzpath = self.tmp + ".gz"
        with open(gzpath, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
                for chunk in iter(lambda: self.f.read(1 << 20), b""):
                    diff.update(chunk)
                    gz.write(chunk)
        self.f.close()
        os.unlink(self.tmp)
        h = hashlib.sha256()
        with open(gzpath, "rb") as g:
            for chunk in iter(lambda: g.read(1 << 20), b""):
                h.update(chunk)
        d = h.hexdigest()
        os.rename(gzpath, os.path.join(blobs, d))
        return "sha256:" + diff.hexdigest(), "sha256:" + d, os.path.getsize(os.path.join(blobs, d))


# Debian's merged /usr: /lib, /lib64 and /sbin are links into /usr
base = Layer()
for d in ["usr/bin", "usr/lib", "usr/lib64", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "bin"]:
    base.dir(d, 0o1777 if d == "tmp" else 0o755)
for l in ["lib", "lib64", "sbin"]:
    base.symlink(l, "usr/" + l)
base.file("bin/busybox", path=a.busybox, mode=0o755)
applets = subprocess.run([a.busybox, "--list"], check=True, capture_output=True, text=True).stdout.split()
for ap in sorted(set(applets)):
    if ap != "busybox":
        base.symlink("bin/" + ap, "busybox")
base.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
base.file("etc/group", b"root:x:0:\n")
base.file("etc/hello.txt", b"hello from the lazily pulled layer\n")
base.packages(BASE_PKGS)
layers = [base.finish()]

runtime = Layer()
runtime.packages(RUNTIME_PKGS)
runtime.host_tree("/usr/lib/python3.11")
runtime.symlink("usr/bin/python3", "python3.11")
layers.append(runtime.finish())

app = Layer()
app.host_tree("/usr/lib/python3/dist-packages")
layers.append(app.finish())

config = {
    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(MTIME)),
    "architecture": "amd64",
    "os": "linux",
    "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/usr/bin/python3"], "WorkingDir": "/"},
    "rootfs": {"type": "layers", "diff_ids": [l[0] for l in layers]},
    "history": [{"created_by": "mkimage-python.py base"}, {"created_by": "mkimage-python.py runtime"},
                {"created_by": "mkimage-python.py dist-packages"}],
}
cfg_d, cfg_n = put_blob(json.dumps(config, sort_keys=True).encode())
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": cfg_n},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l[1], "size": l[2]}
               for l in layers],
}
man_d, man_n = put_blob(json.dumps(manifest, sort_keys=True).encode())
with open(os.path.join(a.out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
with open(os.path.join(a.out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_d, "size": man_n,
        "annotations": {"org.opencontainers.image.ref.name": a.tag}}]}, f)
print(json.dumps({"manifest": man_d, "layers": [{"digest": l[1], "size": l[2]} for l in layers]}))
