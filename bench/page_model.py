# A model, in Python's SQLite, of the log pages and time of a collection of 1,000 blobs
# (100 images of 10 blobs, one image per repository, in a store of 100,000): the removal
# statements of Bosun's schema (text digests as keys) against a schema with integer blob
# ids (keys pushed in order, the digest, as 32 bytes, in a unique index). BENCHMARKS.md
# quotes it. Run: python3 bench/page_model.py
import sqlite3, os, random, hashlib, sys, time, tempfile
R, PER, BLOBS = 100, 100, 10   # repositories, images per repository, blobs per image
def build(path, ints):
    c = sqlite3.connect(path); c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=OFF")
    if not ints:
        c.executescript("""
        CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL, created_at INTEGER NOT NULL, touched_at INTEGER NOT NULL,
            ref_count INTEGER NOT NULL DEFAULT 0, link_count INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
        CREATE INDEX blobs_unreferenced ON blobs (touched_at) WHERE ref_count = 0;
        CREATE TABLE repository_blobs (repository_id INTEGER NOT NULL, digest TEXT NOT NULL, linked_at INTEGER NOT NULL,
            ref_count INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (repository_id, digest)) WITHOUT ROWID;
        CREATE INDEX repository_blobs_unreferenced ON repository_blobs (linked_at) WHERE ref_count = 0;
        CREATE TRIGGER unlink AFTER DELETE ON repository_blobs BEGIN UPDATE blobs SET link_count = link_count - 1 WHERE digest = OLD.digest; END;
        """)
    else:
        c.executescript("""
        CREATE TABLE blobs (id INTEGER PRIMARY KEY, digest BLOB NOT NULL UNIQUE, size INTEGER NOT NULL, created_at INTEGER NOT NULL,
            touched_at INTEGER NOT NULL, ref_count INTEGER NOT NULL DEFAULT 0, link_count INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX blobs_unreferenced ON blobs (touched_at) WHERE ref_count = 0;
        CREATE TABLE repository_blobs (repository_id INTEGER NOT NULL, blob_id INTEGER NOT NULL, linked_at INTEGER NOT NULL,
            ref_count INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (repository_id, blob_id)) WITHOUT ROWID;
        CREATE INDEX repository_blobs_unreferenced ON repository_blobs (linked_at) WHERE ref_count = 0;
        CREATE TRIGGER unlink AFTER DELETE ON repository_blobs BEGIN UPDATE blobs SET link_count = link_count - 1 WHERE id = OLD.blob_id; END;
        """)
    rnd = random.Random(1); t = 0; garbage = []
    for i in range(R * PER):   # pushed in image order, image i in repository i % R
        repo = i % R
        for b in range(BLOBS):
            d = hashlib.sha256(b"%d/%d" % (i, b)).digest(); t += 1
            rc = 0 if i % PER == 50 else 1
            if not ints:
                key = "sha256:" + d.hex()
                c.execute("INSERT INTO blobs VALUES (?,?,?,?,?,1)", (key, 1000, t, t, rc))
                c.execute("INSERT INTO repository_blobs VALUES (?,?,?,?)", (repo, key, t, rc))
            else:
                cur = c.execute("INSERT INTO blobs (digest,size,created_at,touched_at,ref_count,link_count) VALUES (?,?,?,?,?,1)", (d, 1000, t, t, rc))
                key = cur.lastrowid
                c.execute("INSERT INTO repository_blobs VALUES (?,?,?,?)", (repo, key, t, rc))
            if rc == 0: garbage.append((repo, key))
    c.commit(); c.execute("PRAGMA wal_checkpoint(TRUNCATE)"); c.close()
    return garbage
def collect(path, ints, garbage):
    c = sqlite3.connect(path, isolation_level=None); c.execute("PRAGMA synchronous=OFF")
    c.execute("PRAGMA cache_size=-32768")
    c.execute("SELECT count(*) FROM blobs").fetchone(); c.execute("SELECT count(*) FROM repository_blobs").fetchone()
    t0 = time.perf_counter(); c.execute("BEGIN IMMEDIATE")
    col = "blob_id" if ints else "digest"; bcol = "id" if ints else "digest"
    for repo, key in garbage:
        c.execute(f"DELETE FROM repository_blobs WHERE repository_id = ? AND {col} = ? AND ref_count = 0", (repo, key))
        c.execute(f"DELETE FROM blobs WHERE {bcol} = ? AND ref_count = 0 AND link_count = 0", (key,))
    c.execute("COMMIT"); dt = time.perf_counter() - t0
    frames = c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    c.close(); return frames, dt
for ints in (False, True):
    for run in range(2):
        d = tempfile.mkdtemp(dir="/tmp"); p = os.path.join(d, "m.sqlite")
        g = build(p, ints)
        frames, dt = collect(p, ints, g)
        print("integer ids" if ints else "text digests", "run", run, "garbage", len(g), "log frames", frames, "statements+commit %.1f ms" % (dt * 1000), "db pages", os.path.getsize(p) // 4096)
