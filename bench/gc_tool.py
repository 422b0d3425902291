#!/usr/bin/env python3
"""Helper for bench/gc: deterministic test images, a concurrent HTTP pusher, the
reference registry's filesystem layout writer, deletes, pull checks and the
push-latency probe (with an optional back-to-back garbage-collection loop).

Every image is derived from (seed, index) alone, so the pusher, the layout writer
and the checkers agree on every byte without keeping files around.

Image i (0 <= i < images) lives in repository gcbench/rNNN (images are split into
`repos` contiguous ranges), tag i<i>.  It has a config blob (JSON, unique), one
shared base layer (i % base, from a pool of `base` layers) and `layers` unique
random layers of 256..4096 bytes.  Distinct blobs = images * (1 + layers) + base.
"""
import argparse
import hashlib
import http.client
import json
import multiprocessing as mp
import os
import random
import sys
import time

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT = OCI_MANIFEST + ", application/vnd.docker.distribution.manifest.v2+json"


# ----------------------------------------------------------------- content
class Spec:
    def __init__(self, a):
        self.images = a.images
        self.repos = a.repos
        self.layers = a.layers
        self.base = a.base
        self.seed = a.seed
        self.per_repo = -(-self.images // self.repos)

    def repo_of(self, i):
        return "gcbench/r%03d" % (i // self.per_repo)

    def repo_images(self, r):
        return range(r * self.per_repo, min(self.images, (r + 1) * self.per_repo))

    def base_blob(self, b):
        rng = random.Random("%s:base:%d" % (self.seed, b))
        return rng.randbytes(rng.randint(2048, 8192))

    def image(self, i):
        """-> (repo, tag, [(digest, bytes, mediatype)] config+unique layers, base (digest, bytes),
        manifest bytes, manifest digest)"""
        rng = random.Random("%s:img:%d" % (self.seed, i))
        layers = [rng.randbytes(rng.randint(256, 4096)) for _ in range(self.layers)]
        base = self.base_blob(i % self.base)
        ldig = [sha(b) for b in layers]
        bdig = sha(base)
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["BENCH_IMAGE=%d" % i], "Labels": {"bench": "gc", "seed": str(self.seed)}},
            "rootfs": {"type": "layers", "diff_ids": [bdig] + ldig},
        }, separators=(",", ":"), sort_keys=True).encode()
        cdig = sha(config)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cdig, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": bdig, "size": len(base)}]
                      + [{"mediaType": OCI_LAYER, "digest": d, "size": len(b)} for d, b in zip(ldig, layers)],
        }, separators=(",", ":"), sort_keys=True).encode()
        unique = [(cdig, config)] + list(zip(ldig, layers))
        return self.repo_of(i), "i%d" % i, unique, (bdig, base), manifest, sha(manifest)


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def select(spec, residues):
    """Image indices whose index % 100 is in residues, interleaved across repos."""
    out = [i for i in range(spec.images) if i % 100 in residues]
    return out


# ----------------------------------------------------------------- HTTP
class Client:
    def __init__(self, url, timeout=600):
        assert url.startswith("http://127.0.0.1:"), url
        hostport = url[len("http://"):].rstrip("/")
        self.host, self.port = hostport.split(":")
        self.timeout = timeout
        self.conn = None

    def req(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.conn.close(); self.conn = None
                return r.status, r.headers, data
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest,
                    http.client.BadStatusLine):
                self.conn.close(); self.conn = None
                if attempt:
                    raise


class Fail(Exception):
    pass


def expect(st, want, what, body=b""):
    if st not in want:
        raise Fail("%s -> HTTP %d (expected %s) %s" % (what, st, "/".join(map(str, want)),
                                                       body[:300].decode("utf-8", "replace")))


def push_blob(c, repo, dig, data, mode):
    if mode == "monolithic-post":
        p = "/v2/%s/blobs/uploads/?digest=%s" % (repo, dig)
        st, h, body = c.req("POST", p, data, {"Content-Type": "application/octet-stream",
                                              "Content-Length": str(len(data))})
        expect(st, (201,), "POST " + p, body)
        if h.get("Docker-Content-Digest") not in (None, dig):
            raise Fail("POST %s answered Docker-Content-Digest %s" % (p, h.get("Docker-Content-Digest")))
        return 1
    # POST + PUT (the reference does not accept a monolithic POST)
    p = "/v2/%s/blobs/uploads/" % repo
    st, h, _ = c.req("POST", p, b"", {"Content-Length": "0"})
    expect(st, (202,), "POST " + p)
    loc = h["Location"]
    if loc.startswith("http"):
        loc = "/" + loc.split("/", 3)[3]
    loc += ("&" if "?" in loc else "?") + "digest=" + dig
    st, _, _ = c.req("PUT", loc, data, {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    expect(st, (201,), "PUT " + loc)
    return 2


def put_manifest(c, repo, ref, manifest, mdig):
    p = "/v2/%s/manifests/%s" % (repo, ref)
    st, h, body = c.req("PUT", p, manifest, {"Content-Type": OCI_MANIFEST})
    expect(st, (201,), "PUT " + p, body)
    if h.get("Docker-Content-Digest") != mdig:
        raise Fail("PUT %s answered Docker-Content-Digest %s, expected %s" % (p, h.get("Docker-Content-Digest"), mdig))


# ----------------------------------------------------------------- populate (HTTP)
def _populate_worker(args):
    a, repos = args
    spec, c = Spec(a), Client(a.url)
    n_req = n_bytes = 0
    for r in repos:
        imgs = spec.repo_images(r)
        if not imgs:
            continue
        for b in sorted({i % spec.base for i in imgs}):
            data = spec.base_blob(b)
            n_req += push_blob(c, spec.repo_of(imgs[0]), sha(data), data, a.mode); n_bytes += len(data)
        for i in imgs:
            repo, tag, unique, _, manifest, mdig = spec.image(i)
            for d, data in unique:
                n_req += push_blob(c, repo, d, data, a.mode); n_bytes += len(data)
            put_manifest(c, repo, tag, manifest, mdig)
            n_req += 1; n_bytes += len(manifest)
    return n_req, n_bytes


def cmd_populate(a):
    spec = Spec(a)
    nrepos = -(-spec.images // spec.per_repo)
    chunks = [(a, list(range(w, nrepos, a.workers))) for w in range(a.workers)]
    t0 = time.monotonic()
    with mp.Pool(a.workers) as pool:
        res = pool.map(_populate_worker, chunks)
    dt = time.monotonic() - t0
    n_req = sum(r[0] for r in res)
    print(json.dumps({"seconds": round(dt, 3), "requests": n_req, "bytes": sum(r[1] for r in res),
                      "req_per_s": round(n_req / dt, 1), "workers": a.workers, "mode": a.mode}))


# ----------------------------------------------------------------- reference layout
def _wfile(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _layout_worker(args):
    a, repos = args
    spec = Spec(a)
    v2 = os.path.join(a.root, "docker/registry/v2")
    blob = lambda d: os.path.join(v2, "blobs/sha256", d[7:9], d[7:], "data")
    n = 0
    for r in repos:
        imgs = spec.repo_images(r)
        if not imgs:
            continue
        rdir = os.path.join(v2, "repositories", spec.repo_of(imgs[0]))
        for b in sorted({i % spec.base for i in imgs}):
            d = sha(spec.base_blob(b))
            _wfile(os.path.join(rdir, "_layers/sha256", d[7:], "link"), d.encode())
        for i in imgs:
            _, tag, unique, _, manifest, mdig = spec.image(i)
            for d, data in unique:
                _wfile(blob(d), data)
                _wfile(os.path.join(rdir, "_layers/sha256", d[7:], "link"), d.encode())
                n += 1
            _wfile(blob(mdig), manifest)
            _wfile(os.path.join(rdir, "_manifests/revisions/sha256", mdig[7:], "link"), mdig.encode())
            _wfile(os.path.join(rdir, "_manifests/tags", tag, "current/link"), mdig.encode())
            _wfile(os.path.join(rdir, "_manifests/tags", tag, "index/sha256", mdig[7:], "link"), mdig.encode())
            n += 1
    return n


def cmd_write_layout(a):
    spec = Spec(a)
    t0 = time.monotonic()
    v2 = os.path.join(a.root, "docker/registry/v2")
    for b in range(spec.base):
        data = spec.base_blob(b)
        d = sha(data)
        _wfile(os.path.join(v2, "blobs/sha256", d[7:9], d[7:], "data"), data)
    nrepos = -(-spec.images // spec.per_repo)
    chunks = [(a, list(range(w, nrepos, a.workers))) for w in range(a.workers)]
    with mp.Pool(a.workers) as pool:
        n = sum(pool.map(_layout_worker, chunks)) + spec.base
    print(json.dumps({"seconds": round(time.monotonic() - t0, 3), "blobs_written": n}))


# ----------------------------------------------------------------- expectations
def cmd_expect(a):
    """Counts for a set of deleted images: the blobs that become garbage."""
    spec = Spec(a)
    sel = select(spec, set(a.residues))
    blobs = nbytes = 0
    mbytes = 0
    for i in sel:
        _, _, unique, _, manifest, _ = spec.image(i)
        blobs += len(unique); nbytes += sum(len(d) for _, d in unique); mbytes += len(manifest)
    store_blobs = spec.images * (1 + spec.layers) + spec.base
    print(json.dumps({"images": len(sel), "blobs": blobs, "bytes": nbytes, "manifests": len(sel),
                      "manifest_bytes": mbytes, "store_blobs": store_blobs}))


# ----------------------------------------------------------------- delete
def delete_images(spec, c, residues):
    """DELETE the manifests of the images whose index % 100 is in residues; -> how many."""
    sel = select(spec, set(residues))
    for i in sel:
        repo, _, _, _, _, mdig = spec.image(i)
        p = "/v2/%s/manifests/%s" % (repo, mdig)
        st, _, body = c.req("DELETE", p)
        expect(st, (202,), "DELETE " + p, body)
    return len(sel)


def cmd_delete(a):
    t0 = time.monotonic()
    deleted = delete_images(Spec(a), Client(a.url), a.residues)
    print(json.dumps({"deleted": deleted, "seconds": round(time.monotonic() - t0, 3)}))


# ----------------------------------------------------------------- pull checks
def _verify_worker(args):
    a, kept_part, deleted_part = args
    spec, c = Spec(a), Client(a.url)
    problems, blobs_ok, gone_checked, get_ms = [], 0, 0, []

    def get(p, headers=None):
        t = time.monotonic()
        r = c.req("GET", p, headers=headers)
        get_ms.append((time.monotonic() - t) * 1000)
        return r

    for i in kept_part:
        repo, tag, unique, (bdig, base), manifest, mdig = spec.image(i)
        p = "/v2/%s/manifests/%s" % (repo, tag)
        st, h, body = get(p, {"Accept": ACCEPT})
        if st != 200 or body != manifest or h.get("Docker-Content-Digest") != mdig:
            problems.append("GET %s -> %d, %d bytes, digest %s (expected 200, %s)" % (
                p, st, len(body), h.get("Docker-Content-Digest"), mdig))
            continue
        for d, _ in [(bdig, base)] + unique:
            p = "/v2/%s/blobs/%s" % (repo, d)
            st, _, body = get(p)
            if st != 200 or sha(body) != d:
                problems.append("GET %s -> %d, sha256 of body %s" % (p, st, sha(body)))
            else:
                blobs_ok += 1
    for i in deleted_part:
        repo, tag, unique, _, _, mdig = spec.image(i)
        for p in ["/v2/%s/manifests/%s" % (repo, mdig), "/v2/%s/blobs/%s" % (repo, unique[0][0]),
                  "/v2/%s/blobs/%s" % (repo, unique[-1][0])]:
            st, _, _ = get(p, {"Accept": ACCEPT})
            gone_checked += 1
            if st != 404:
                problems.append("GET %s -> %d after delete%s (expected 404)" % (
                    p, st, "" if "/manifests/" in p else " and collection"))
    return problems, blobs_ok, gone_checked, get_ms


def cmd_verify(a):
    """Pull a sample of kept images (manifest by tag, every blob, sha256 checked) and check
    that deleted manifests and their unique blobs answer 404; a.workers keep-alive clients."""
    spec = Spec(a)
    rng = random.Random("verify:%s" % a.residues_deleted)
    deleted = set(select(spec, set(a.residues_deleted)))
    ignored = set(select(spec, set(a.ignore_residues)))
    kept = [i for i in range(spec.images) if i not in deleted and i not in ignored]
    sample = rng.sample(kept, min(a.sample, len(kept)))
    gone = sorted(deleted)[: a.sample]
    w = a.workers
    t0 = time.monotonic()
    with mp.Pool(w) as pool:
        res = pool.map(_verify_worker, [(a, sample[k::w], gone[k::w]) for k in range(w)])
    dt = time.monotonic() - t0
    problems = [p for r in res for p in r[0]]
    get_ms = [x for r in res for x in r[3]]
    print(json.dumps({"images_checked": len(sample), "blobs_checked": sum(r[1] for r in res),
                      "deleted_checked": sum(r[2] for r in res), "problems": problems[:20],
                      "problem_count": len(problems), "gets": len(get_ms), "seconds": round(dt, 3),
                      "get_mean_ms": round(sum(get_ms) / max(1, len(get_ms)), 3),
                      "get_p50_ms": round(pct(get_ms, 50), 3), "get_p99_ms": round(pct(get_ms, 99), 3),
                      "gets_over_30ms": sum(1 for x in get_ms if x > 30), "workers": w}))


# ----------------------------------------------------------------- latency probe
def pct(xs, p):
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))  # nearest rank
    return s[k]


def _probe_worker(args):
    url, label, w, n, seed, start_at = args
    c = Client(url)
    rng = random.Random("%s:probe:%s:%d" % (seed, label, w))
    repo = "probe/%s/w%d" % (label, w)
    out = []
    # warm-up push (not recorded): opens the connection, creates the repository
    for j in range(-1, n):
        layer = rng.randbytes(rng.randint(1024, 4096))
        ld = sha(layer)
        cfg = json.dumps({"architecture": "amd64", "os": "linux", "probe": "%s-%d-%d" % (label, w, j),
                          "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode()
        cd = sha(cfg)
        man = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": {"mediaType": OCI_CONFIG, "digest": cd, "size": len(cfg)},
                          "layers": [{"mediaType": OCI_LAYER, "digest": ld, "size": len(layer)}]},
                         separators=(",", ":")).encode()
        if j == 0:
            while time.time() < start_at:
                time.sleep(0.001)
        t0 = time.monotonic()
        push_blob(c, repo, cd, cfg, "monolithic-post")
        push_blob(c, repo, ld, layer, "monolithic-post")
        put_manifest(c, repo, "p%d" % j, man, sha(man))
        t1 = time.monotonic()
        if j >= 0:
            out.append((t0, t1))
    return out


def _gc_loop(url, a, victims, stop, q):
    """Back to back: POST /admin/gc, again and again.  Before each collection, DELETE
    (by digest) as many victim images as keep the delete rate at a.gc_rate images/s, so
    that every collection has fresh garbage (aged past the grace period) to remove."""
    spec, c = Spec(a), Client(url)
    runs, k, fatal = [], 0, None
    t_start = time.monotonic()
    try:
        while not stop.is_set():
            owed = int(a.gc_rate * (time.monotonic() - t_start)) - k
            batch = victims[k:k + max(0, min(owed, 500))]
            k += len(batch)
            for i in batch:
                repo, _, _, _, _, mdig = spec.image(i)
                st, _, body = c.req("DELETE", "/v2/%s/manifests/%s" % (repo, mdig))
                expect(st, (202,), "DELETE /v2/%s/manifests/%s (gc loop)" % (repo, mdig), body)
            if a.no_collect:  # the same DELETEs at the same rate, no collection
                if batch:
                    runs.append({"images_deleted": len(batch)})
                time.sleep(0.005)
                continue
            t0 = time.monotonic()
            st, _, body = c.req("POST", "/admin/gc")
            t1 = time.monotonic()
            expect(st, (200,), "POST /admin/gc", body)
            rep = json.loads(body)
            runs.append({"t0": t0, "t1": t1, "images_deleted": len(batch), "blobs_removed": rep["blobs_removed"],
                         "links_removed": rep["links_removed"],
                         "server_ms": rep["finished_at"] - rep["started_at"], "error": rep.get("error")})
    except Exception as e:  # reported, never left hanging
        fatal = "%s: %s" % (type(e).__name__, e)
    q.put({"runs": runs, "victims_used": k, "victims_left": len(victims) - k, "fatal": fatal})


def cmd_probe(a):
    victims = []
    if a.gc_loop:
        spec = Spec(a)
        victims = select(spec, set(a.residues))[a.victim_offset:]
        stop, q = mp.Event(), mp.Queue()
        gcp = mp.Process(target=_gc_loop, args=(a.url, a, victims, stop, q))
        gcp.start()
        time.sleep(a.lead)  # the loop runs (and garbage ages past the grace period) before the first push
    start_at = time.time() + 0.3
    try:
        with mp.Pool(a.workers) as pool:
            res = pool.map(_probe_worker, [(a.url, a.label, w, a.pushes // a.workers, a.seed, start_at)
                                           for w in range(a.workers)])
    except BaseException:
        if a.gc_loop:
            stop.set(); gcp.join(30)
            if gcp.is_alive():
                gcp.terminate()
        raise
    pushes = [p for r in res for p in r]
    t_first = min(p[0] for p in pushes); t_last = max(p[1] for p in pushes)
    gc = None
    if a.gc_loop:
        stop.set()
        gc = q.get(timeout=600)
        gcp.join()
        if gc["fatal"]:
            raise Fail("gc loop: " + gc["fatal"])
    lat = [(e - s) * 1000 for s, e in pushes]
    out = {"label": a.label, "pushes": len(pushes), "workers": a.workers,
           "seconds": round(t_last - t_first, 3), "pushes_per_s": round(len(pushes) / (t_last - t_first), 1),
           "p50_ms": round(pct(lat, 50), 3), "p90_ms": round(pct(lat, 90), 3), "p99_ms": round(pct(lat, 99), 3),
           "max_ms": round(max(lat), 3), "lat_ms": [round(x, 3) for x in lat]}
    if gc is not None and a.no_collect:
        out["deletes"] = {"images_deleted_total": sum(r["images_deleted"] for r in gc["runs"]),
                          "victims_used": gc["victims_used"], "victims_left": gc["victims_left"]}
    elif gc is not None:
        runs = [r for r in gc["runs"] if r["t1"] > t_first and r["t0"] < t_last]
        busy = sum(min(r["t1"], t_last) - max(r["t0"], t_first) for r in runs)
        overl = [(e - s) * 1000 for s, e in pushes if any(r["t0"] < e and s < r["t1"] for r in runs)]
        out["gc"] = {"collections_during_probe": len(runs), "collections_total": len(gc["runs"]),
                     "collections_with_garbage_during_probe": sum(1 for r in runs if r["blobs_removed"]),
                     "blobs_removed_during_probe": sum(r["blobs_removed"] for r in runs),
                     "images_deleted_total": sum(r["images_deleted"] for r in gc["runs"]),
                     "victims_used": gc["victims_used"], "victims_left": gc["victims_left"],
                     "gc_max_blobs": max([r["blobs_removed"] for r in runs] or [0]),
                     "gc_blobs_per_collection": [r["blobs_removed"] for r in runs],
                     "busy_fraction": round(busy / (t_last - t_first), 3),
                     "pushes_overlapping_gc": len(overl),
                     "p99_overlapping_ms": round(pct(overl, 99), 3) if overl else None,
                     "gc_wall_ms_median": round(pct([(r["t1"] - r["t0"]) * 1000 for r in runs], 50), 1) if runs else None,
                     "gc_server_ms_median": pct([r["server_ms"] for r in runs], 50) if runs else None,
                     "errors": [r["error"] for r in gc["runs"] if r["error"]][:5]}
    print(json.dumps(out))


def cmd_percentiles(a):
    lat = []
    for f in a.files:
        with open(f) as fh:
            lat += json.load(fh)["lat_ms"]
    print(json.dumps({"n": len(lat), "p50_ms": round(pct(lat, 50), 3), "p99_ms": round(pct(lat, 99), 3),
                      "max_ms": round(max(lat), 3)}))


# ----------------------------------------------------------------- main
def cmd_unlink_floor(a):
    """The least time any collector can take to free the garbage on this filesystem:
    write --files files totalling --bytes (the garbage's count and size) into a sharded
    tree like a blob store's, among --among other files (the store's kept blobs, so that
    the directories are as large as the store's), flush them, then time unlinking the
    garbage's files and nothing else."""
    import concurrent.futures
    rnd = random.Random(7)
    sizes = [rnd.randint(1, 2 * a.bytes // a.files) for _ in range(a.files)]
    total = a.files + a.among
    garbage = set(rnd.sample(range(total), a.files))
    paths = []
    # In one sequence with the kept files, as a store's blobs were written.
    for i in range(total):
        d = os.path.join(a.dir, "%02x" % (i % 256))
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "f%d" % i)
        with open(path, "wb") as f:
            f.write(os.urandom(sizes[len(paths)]) if i in garbage else b"kept")
        if i in garbage:
            paths.append(path)
    os.sync()

    def write_garbage():
        for path, size in zip(paths, sizes):
            with open(path, "wb") as f:
                f.write(os.urandom(size))
        os.sync()
    by_threads = {}
    # Unlinks can wait for the device (ext4 without a journal trims freed blocks inside
    # unlink(2) when mounted with `discard`), and those waits overlap across threads.
    # Each thread runs a plain loop over its share: an executor's map hands out one path
    # at a time (its chunksize is ignored for threads), and that hand-off alone cost more
    # than the unlinks it timed.
    def unlink_all(share):
        for path in share:
            os.unlink(path)

    counts = (1, 4, 16)
    for threads in counts:
        shares = [paths[i::threads] for i in range(threads)]
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            list(ex.map(unlink_all, shares))
        by_threads[threads] = round(time.perf_counter() - t, 4)
        if threads != counts[-1]:  # write them again for the next timing
            write_garbage()
    print(json.dumps({"files": a.files, "bytes": sum(sizes), "seconds": min(by_threads.values()),
                      "by_threads": by_threads}))


# ----------------------------------------------------------------- A/B of collections
def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Bosun:
    """A Bosun server on a data directory, collections off and no grace period, so that
    every collection is started by the caller and removes what the DELETEs left."""

    def __init__(self, binary, data_dir, log_path):
        import subprocess
        self.url = "http://127.0.0.1:%d" % _free_port()
        env = dict(os.environ, BOSUN_GC_ENABLED="false", BOSUN_GC_GRACE_PERIOD="0", BOSUN_LOG="warn")
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([binary, "serve", "--listen", self.url[len("http://"):], "--data-dir", data_dir],
                                     env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while True:
            try:
                if Client(self.url, timeout=5).req("GET", "/v2/")[0] in (200, 401):
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise Fail("%s did not start (log: %s)" % (binary, log_path))
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        self.log.close()


def cmd_ab(a):
    """Collections of the same garbage by several Bosun binaries, alternating: per round
    and binary, a fresh copy of --store, then for each residue the DELETEs of its images,
    a sync and --quiet seconds, and one timed POST /admin/gc (curl-like wall time, and
    the server's own finished_at - started_at). A missing --store is populated first, by
    the first binary. Medians per binary on stdout, one JSON line per collection on stderr."""
    import shutil
    import statistics
    spec = Spec(a)
    # The store is the data dir itself, or a directory holding one as data/.
    is_store = lambda d: os.path.exists(os.path.join(d, "metadata.sqlite"))
    store = a.store if is_store(a.store) else os.path.join(a.store, "data")
    if not is_store(store):
        os.makedirs(a.store, exist_ok=True)
        server = _Bosun(a.bin[0], store, os.path.join(a.store, "populate.log"))
        try:
            cmd_populate(argparse.Namespace(**vars(a), url=server.url, workers=4, mode="monolithic-post"))
        finally:
            server.stop()
    work = os.path.join(a.work, "data")
    expected = {m: len(select(spec, {m})) * (1 + spec.layers) for m in a.residues}
    results = {b: {"wall_ms": [], "server_ms": []} for b in a.bin}
    for r in range(a.rounds):
        for binary in a.bin:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(store, work, symlinks=True)
            os.sync()
            server = _Bosun(binary, work, os.path.join(a.work, "server.log"))
            try:
                c = Client(server.url)
                for m in a.residues:
                    delete_images(spec, c, [m])
                    os.sync()
                    time.sleep(a.quiet)
                    t = time.perf_counter()
                    st, _, body = c.req("POST", "/admin/gc")
                    wall = (time.perf_counter() - t) * 1000
                    expect(st, (200,), "POST /admin/gc", body)
                    run = json.loads(body)
                    if run["blobs_removed"] != expected[m] or run.get("error"):
                        raise Fail("%s removed %s blobs (expected %d), error %s"
                                   % (binary, run["blobs_removed"], expected[m], run.get("error")))
                    server_ms = run["finished_at"] - run["started_at"]
                    results[binary]["wall_ms"].append(wall)
                    results[binary]["server_ms"].append(server_ms)
                    print(json.dumps({"round": r + 1, "bin": binary, "residue": m, "wall_ms": round(wall, 1),
                                      "server_ms": server_ms}), file=sys.stderr)
            finally:
                server.stop()
    for binary, res in results.items():
        w = res["wall_ms"]
        print("%s: wall median %.1f ms (min %.1f, max %.1f), server median %.0f ms, n %d"
              % (binary, statistics.median(w), min(w), max(w), statistics.median(res["server_ms"]), len(w)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--repos", type=int, default=100)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--base", type=int, default=20)
    ap.add_argument("--seed", default="bosun-gc-bench-1")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("populate"); p.add_argument("--url", required=True)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mode", choices=["monolithic-post", "post-put"], default="monolithic-post")
    p = sub.add_parser("write-layout"); p.add_argument("--root", required=True)
    p.add_argument("--workers", type=int, default=2)
    p = sub.add_parser("expect"); p.add_argument("--residues", type=int, nargs="+", required=True)
    p = sub.add_parser("delete"); p.add_argument("--url", required=True)
    p.add_argument("--residues", type=int, nargs="+", required=True)
    p = sub.add_parser("verify"); p.add_argument("--url", required=True)
    p.add_argument("--residues-deleted", type=int, nargs="*", default=[])
    p.add_argument("--sample", type=int, default=100)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--ignore-residues", type=int, nargs="*", default=[],
                   help="images neither checked as kept nor as deleted (the gc loop's victims)")
    p = sub.add_parser("probe"); p.add_argument("--url", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--pushes", type=int, default=500)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--gc-loop", action="store_true")
    p.add_argument("--gc-rate", type=float, default=100, help="images deleted per second by the gc loop")
    p.add_argument("--residues", type=int, nargs="*", default=list(range(52, 100)))
    p.add_argument("--victim-offset", type=int, default=0)
    p.add_argument("--no-collect", action="store_true",
                   help="with --gc-loop: only the DELETEs, no POST /admin/gc (control condition)")
    p.add_argument("--lead", type=float, default=0.2, help="seconds the gc loop runs before the first push")
    p = sub.add_parser("percentiles"); p.add_argument("files", nargs="+")
    p = sub.add_parser("unlink-floor"); p.add_argument("--dir", required=True)
    p.add_argument("--files", type=int, required=True); p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--among", type=int, default=0, help="other files in the tree (the store's kept blobs)")
    p = sub.add_parser("ab", help="time the collections of several Bosun binaries on copies of one store")
    p.add_argument("--store", required=True, help="a stopped Bosun data dir with this content (made if missing)")
    p.add_argument("--work", required=True, help="where each copy of the store is run")
    p.add_argument("--bin", action="append", required=True, help="a bosun binary (repeat: two or more)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--residues", type=int, nargs="+", default=[50, 51, 52])
    p.add_argument("--quiet", type=float, default=2.0, help="seconds between the DELETEs and the collection")
    a = ap.parse_args()
    try:
        {"populate": cmd_populate, "write-layout": cmd_write_layout, "expect": cmd_expect,
         "delete": cmd_delete, "verify": cmd_verify, "probe": cmd_probe,
         "percentiles": cmd_percentiles, "unlink-floor": cmd_unlink_floor, "ab": cmd_ab}[a.cmd](a)
    except Fail as e:
        print("gc_tool: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
