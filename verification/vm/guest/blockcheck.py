#!/usr/bin/python3
"""A verifying block workload for the lab's client, used when `duet-blockcheck` is not staged.

Same command line and result as duet-blockcheck:
  blockcheck.py --device /dev/mapper/X [--init] [--threads N] [--write-pct P] [--size-mb M]
                [--duration-s S | --stop-file PATH] [--progress-file PATH] [--json-out PATH]
                [--stall-threshold-ms T]
Every 4 KiB block it writes describes itself (magic, block number, generation, the pair repeated
over the block). Each block has at most one operation outstanding; every read is checked against
the newest acknowledged write of that block (older: stale; unknown generation or a damaged
pattern: corrupt). I/O is O_DIRECT. At the end every block is read back (older than acknowledged:
a lost write). Errors the application sees are counted, never retried silently. The last line
printed is one JSON object.
"""

import argparse
import json
import mmap
import os
import random
import signal
import struct
import sys
import threading
import time

BS = 4096
MAGIC = b"DUETBLK1"


def pattern(block, gen):
    head = MAGIC + struct.pack("<QQ", block, gen)
    return (head * (BS // len(head) + 1))[:BS]


def decode(buf, block):
    """(gen, ok): the generation the block holds; ok False when the pattern is damaged."""
    data = bytes(buf)
    if data == b"\0" * BS:
        return 0, True
    if data[:8] != MAGIC:
        return None, False
    b, gen = struct.unpack("<QQ", data[8:24])
    if b != block or data != pattern(block, gen):
        return gen, False
    return gen, True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", required=True)
    ap.add_argument("--init", action="store_true")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--write-pct", type=int, default=50)
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--duration-s", type=float, default=0)
    ap.add_argument("--stop-file")
    ap.add_argument("--progress-file")
    ap.add_argument("--json-out")
    ap.add_argument("--stall-threshold-ms", type=float, default=1000)
    a = ap.parse_args()

    nblocks = a.size_mb * 1024 * 1024 // BS
    fd = os.open(a.device, os.O_RDWR | os.O_DIRECT)
    dev_size = os.lseek(fd, 0, os.SEEK_END)
    nblocks = min(nblocks, dev_size // BS)
    acked = [0] * nblocks  # newest acknowledged generation
    maybe = [None] * nblocks  # generation of a failed write that may or may not have landed
    busy = [False] * nblocks
    lock = threading.Lock()
    stop = threading.Event()
    t0 = time.monotonic()
    st = dict(ios=0, reads=0, writes=0, app_errors=0, stale_reads=0, corrupt_reads=0,
              lost_writes=0, max_stall_ms=0.0)
    stalls = []
    errors = []
    last_done = [time.monotonic()]

    def ms_since_start():
        return int((time.monotonic() - t0) * 1000)

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    if a.init:
        chunk = 256  # blocks per write (1 MiB)
        buf = mmap.mmap(-1, chunk * BS)
        for first in range(0, nblocks, chunk):
            n = min(chunk, nblocks - first)
            buf.seek(0)
            for i in range(n):
                buf.write(pattern(first + i, 1))
            os.pwritev(fd, [memoryview(buf)[: n * BS]], first * BS)
        os.fsync(fd)
        for i in range(nblocks):
            acked[i] = 1
        t0 = time.monotonic()

    def check(block, gen, ok, when):
        with lock:
            want = acked[block]
            alt = maybe[block]
        if not ok or gen is None:
            with lock:
                st["corrupt_reads"] += 1
            errors.append(dict(kind="corrupt", block=block, got=gen, want=want, at_ms=when))
            return
        if gen == want or (alt is not None and gen == alt):
            return
        if gen < want:
            with lock:
                st["stale_reads"] += 1
            errors.append(dict(kind="stale", block=block, got=gen, want=want, at_ms=when))
        else:
            with lock:
                st["corrupt_reads"] += 1
            errors.append(dict(kind="corrupt", block=block, got=gen, want=want, at_ms=when))

    def worker(seed):
        rng = random.Random(seed)
        buf = mmap.mmap(-1, BS)
        while not stop.is_set():
            with lock:
                for _ in range(16):
                    block = rng.randrange(nblocks)
                    if not busy[block]:
                        busy[block] = True
                        break
                else:
                    block = None
            if block is None:
                continue
            is_write = rng.randrange(100) < a.write_pct
            start = time.monotonic()
            try:
                if is_write:
                    gen = max(acked[block], maybe[block] or 0) + 1
                    buf.seek(0)
                    buf.write(pattern(block, gen))
                    try:
                        os.pwritev(fd, [buf], block * BS)
                    except OSError as e:
                        with lock:
                            st["app_errors"] += 1
                            maybe[block] = gen
                        errors.append(dict(kind="io", op="write", block=block, err=str(e),
                                           at_ms=ms_since_start()))
                        continue
                    with lock:
                        acked[block] = gen
                        maybe[block] = None
                        st["writes"] += 1
                else:
                    try:
                        os.preadv(fd, [buf], block * BS)
                    except OSError as e:
                        with lock:
                            st["app_errors"] += 1
                        errors.append(dict(kind="io", op="read", block=block, err=str(e),
                                           at_ms=ms_since_start()))
                        continue
                    gen, ok = decode(buf, block)
                    check(block, gen, ok, ms_since_start())
                    with lock:
                        st["reads"] += 1
            finally:
                now = time.monotonic()
                ms = (now - start) * 1000
                with lock:
                    busy[block] = False
                    st["ios"] += 1
                    last_done[0] = now
                    if ms > st["max_stall_ms"]:
                        st["max_stall_ms"] = ms
                    if ms >= a.stall_threshold_ms:
                        stalls.append(dict(at_ms=int((start - t0) * 1000), ms=int(ms),
                                           op="write" if is_write else "read", block=block))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(a.threads)]
    for t in threads:
        t.start()
    deadline = t0 + a.duration_s if a.duration_s > 0 else None
    while not stop.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            break
        if a.stop_file and os.path.exists(a.stop_file):
            break
        if a.progress_file:
            with lock:
                p = dict(st, elapsed_ms=ms_since_start(),
                         idle_ms=int((time.monotonic() - last_done[0]) * 1000))
            tmp = a.progress_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(p, f)
            os.replace(tmp, a.progress_file)
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    run_ms = ms_since_start()

    # Full read-back.
    chunk = 256
    buf = mmap.mmap(-1, chunk * BS)
    readback_errors = 0
    for first in range(0, nblocks, chunk):
        n = min(chunk, nblocks - first)
        try:
            os.preadv(fd, [memoryview(buf)[: n * BS]], first * BS)
        except OSError as e:
            readback_errors += 1
            st["app_errors"] += 1
            errors.append(dict(kind="io", op="readback", block=first, err=str(e)))
            continue
        for i in range(n):
            b = first + i
            gen, ok = decode(memoryview(buf)[i * BS:(i + 1) * BS], b)
            if not ok or gen is None:
                st["corrupt_reads"] += 1
                errors.append(dict(kind="corrupt-final", block=b, got=gen, want=acked[b]))
            elif gen == acked[b] or (maybe[b] is not None and gen == maybe[b]):
                pass
            elif gen < acked[b]:
                st["lost_writes"] += 1
                errors.append(dict(kind="lost", block=b, got=gen, want=acked[b]))
            else:
                st["corrupt_reads"] += 1
                errors.append(dict(kind="corrupt-final", block=b, got=gen, want=acked[b]))
    os.close(fd)
    res = dict(
        ok=st["app_errors"] == 0 and st["lost_writes"] == 0 and st["stale_reads"] == 0
        and st["corrupt_reads"] == 0,
        tool="blockcheck.py",
        ios=st["ios"], reads=st["reads"], writes=st["writes"], app_errors=st["app_errors"],
        lost_writes=st["lost_writes"], stale_reads=st["stale_reads"],
        corrupt_reads=st["corrupt_reads"], max_stall_ms=int(st["max_stall_ms"]),
        stalls=stalls[:200], errors=errors[:50], duration_ms=run_ms, blocks=nblocks,
    )
    line = json.dumps(res)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(line + "\n")
    print(line)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
