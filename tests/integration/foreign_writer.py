#!/usr/bin/env python3
"""A foreign writer for the shared-store stress test: another program writing an image into
the same OCI layout directory the way buildctl's client side does, with none of pf-buildkit's
code. buildctl is not installed on the test machines; this follows what it does on disk:

- Blobs go through containerd's local content store (plugins/content/local): a blob that
  exists is not written again; otherwise the upload is a directory ingest/<sha256 of the ref>/
  holding `ref`, `startedat`, `updatedat`, `total` and `data`; at commit `data` is renamed to
  blobs/sha256/<hex> (unless that appeared meanwhile), its times set, write bits dropped, and
  the ingest directory removed. containerd creates ingest/ up front and never removes it.
- index.json through BuildKit's client/ociindex Put: a non-blocking exclusive flock on
  index.json.lock (held by someone else, buildctl fails with "could not lock"), `oci-layout`
  rewritten, index.json rewritten in place (write at offset 0, then truncate), the lock
  released and its file removed. It never takes pf-buildkit's lock on the layout's root.

Where buildctl would fail on a busy lock, this stand-in tries again 20 ms later (as a CI job
re-running buildctl would) and counts the conflicts.

usage: foreign_writer.py LAYOUT TAG BASE_IMAGE
Prints one JSON line: blobs written, blobs skipped (already there), lock conflicts.
"""

import datetime
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import time
import urllib.request

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def fetch(registry, repo, kind, name, accept=None):
    request = urllib.request.Request(f"http://{registry}/v2/{repo}/{kind}/{name}")
    if accept:
        request.add_header("Accept", accept)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def now_text():
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


class ContentStore:
    """containerd's local content store, as buildctl's client opens it on the layout."""

    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, "ingest"), exist_ok=True)
        self.written = 0
        self.skipped = 0

    def blob_path(self, hexdigest):
        return os.path.join(self.root, "blobs", "sha256", hexdigest)

    def write(self, ref, data):
        hexdigest = sha256(data)
        target = self.blob_path(hexdigest)
        if os.path.exists(target):
            self.skipped += 1
            return
        ingest = os.path.join(self.root, "ingest", sha256(ref.encode()))
        os.mkdir(ingest)
        for name, text in (("ref", ref), ("startedat", now_text()), ("total", str(len(data)))):
            with open(os.path.join(ingest, name), "w") as f:
                f.write(text)
        with open(os.path.join(ingest, "data"), "wb") as f:
            for offset in range(0, len(data), 1 << 16):
                f.write(data[offset : offset + (1 << 16)])
                with open(os.path.join(ingest, "updatedat"), "w") as u:
                    u.write(now_text())
            f.flush()
            os.fsync(f.fileno())
            mode = os.fstat(f.fileno()).st_mode & 0o777
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.exists(target):
            shutil.rmtree(ingest)
            self.skipped += 1
            return
        os.rename(os.path.join(ingest, "data"), target)
        os.utime(target)
        shutil.rmtree(ingest)
        os.chmod(target, mode & ~0o333)
        self.written += 1


def put_index(root, descriptor, tag):
    """BuildKit's ociindex Put with a tag; False when the lock is held elsewhere."""
    lock_path = os.path.join(root, "index.json.lock")
    lock = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        return False
    try:
        with open(os.path.join(root, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        index_fd = os.open(os.path.join(root, "index.json"), os.O_RDWR | os.O_CREAT, 0o644)
        with os.fdopen(index_fd, "r+b") as f:
            old = f.read()
            index = json.loads(old) if old else {}
            index.setdefault("schemaVersion", 2)
            index.setdefault("mediaType", "application/vnd.oci.image.index.v1+json")
            manifests = [
                m
                for m in index.get("manifests") or []
                if (m.get("annotations") or {}).get(REF_NAME) != tag
                or "io.containerd.image.name" in (m.get("annotations") or {})
            ]
            entry = dict(descriptor, annotations={REF_NAME: tag})
            index["manifests"] = manifests + [entry]
            data = json.dumps(index, separators=(",", ":")).encode()
            os.pwrite(f.fileno(), data, 0)
            f.truncate(len(data))
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
        try:
            os.remove(lock_path)
        except FileNotFoundError:
            pass
    return True


def layer_of_its_own(tag):
    """A gzip layer with one file only this run writes; its digest and uncompressed digest."""
    body = os.urandom(200_000)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"foreign/{tag}")
        info.size = len(body)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(body))
    raw = raw.getvalue()
    return gzip.compress(raw, mtime=0), "sha256:" + sha256(raw)


def main():
    layout, tag, base = sys.argv[1:4]
    registry, rest = base.split("/", 1)
    repo, base_tag = rest.rsplit(":", 1)
    store = ContentStore(layout)

    base_manifest = json.loads(fetch(registry, repo, "manifests", base_tag, MANIFEST))
    base_config = json.loads(
        fetch(registry, repo, "blobs", base_manifest["config"]["digest"])
    )
    layers = []
    for descriptor in base_manifest["layers"]:
        data = fetch(registry, repo, "blobs", descriptor["digest"])
        store.write(f"layer-{descriptor['digest']}", data)
        layers.append(descriptor)

    layer, diff_id = layer_of_its_own(tag)
    store.write(f"layer-{tag}", layer)
    layers.append({"mediaType": LAYER, "digest": "sha256:" + sha256(layer), "size": len(layer)})
    config = dict(base_config)
    config["rootfs"] = {
        "type": "layers",
        "diff_ids": base_config["rootfs"]["diff_ids"] + [diff_id],
    }
    config["history"] = base_config.get("history", []) + [{"created_by": f"foreign {tag}"}]
    config = json.dumps(config).encode()
    store.write(f"config-{tag}", config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": "sha256:" + sha256(config), "size": len(config)},
            "layers": layers,
        }
    ).encode()
    store.write(f"manifest-{tag}", manifest)

    descriptor = {"mediaType": MANIFEST, "digest": "sha256:" + sha256(manifest), "size": len(manifest)}
    conflicts = 0
    while not put_index(layout, descriptor, tag):
        conflicts += 1
        time.sleep(0.02)
    print(json.dumps({"written": store.written, "skipped": store.skipped, "lock_conflicts": conflicts}))


if __name__ == "__main__":
    main()
