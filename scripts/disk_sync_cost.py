#!/usr/bin/env python3
"""What one fdatasync costs on a disk, by how many 4 KiB pages it flushes and
where they lie: k pages scattered over a 64 MiB file, or k pages in a row.

A redb commit is copy-on-write: it writes each B-tree page it changes to a
new place, so a commit's pages lie scattered in the file, and the disk's
flush cost grows with their number. This measures that growth on the disk
that holds DIR (a node's data dir, say), as BENCHMARKS.md reports it.

    python3 scripts/disk_sync_cost.py [DIR] [ROUNDS]

DIR defaults to the current directory, ROUNDS (per row) to 200. The file
is removed afterwards.
"""

import os
import random
import sys
import tempfile
import time

PAGE = 4096
FILE_BYTES = 64 << 20


def timed(fd, offsets, data):
    t = time.perf_counter()
    for off in offsets:
        os.pwrite(fd, data, off)
    os.fdatasync(fd)
    return time.perf_counter() - t


def row(label, times):
    times.sort()
    p50 = times[len(times) // 2] * 1e6
    p90 = times[len(times) * 9 // 10] * 1e6
    print(f"| {label} | {p50:.0f} | {p90:.0f} |")


def main():
    where = sys.argv[1] if len(sys.argv) > 1 else "."
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    pages = FILE_BYTES // PAGE
    with tempfile.NamedTemporaryFile(dir=where, prefix="sync-cost-") as f:
        fd = f.fileno()
        # Written once and synced, so that no measured write extends the
        # file or fills a hole.
        for off in range(0, FILE_BYTES, 1 << 20):
            os.pwrite(fd, os.urandom(1 << 20), off)
        os.fsync(fd)
        page = os.urandom(PAGE)
        print(f"fdatasync after k writes, {rounds} rounds each, in {os.path.abspath(where)}\n")
        print("| pages flushed | p50 (µs) | p90 (µs) |")
        print("|---|---|---|")
        for k in (1, 2, 4, 8, 16):
            times = [
                timed(fd, [random.randrange(pages) * PAGE for _ in range(k)], page)
                for _ in range(rounds)
            ]
            row(f"{k} scattered", times)
        for k in (8, 32):
            times = [
                timed(fd, [random.randrange(pages - k) * PAGE], page * k)
                for _ in range(rounds)
            ]
            row(f"{k} in a row (one write)", times)


if __name__ == "__main__":
    main()
