"""The benchmark message mix, deterministic from a fixed seed.

70% ~4 KB plain text, 25% ~40 KB multipart with a small base64 attachment,
5% ~400 KB multipart with a ~290 KB binary attachment in base64 — the same mix
the Dovecot and Cyrus anchor figures were measured with (seed 20240601).
Also the machine's ceiling: write+fsync of the same files from Python.
"""

from __future__ import annotations

import base64
import email.utils
import os
import random
import tempfile
import time
from functools import lru_cache

__all__ = ["SEED", "ceiling", "message", "messages"]

SEED = 20240601


@lru_cache(maxsize=1)
def _text_pool() -> bytes:
    """About 2 MB of pseudo-English, CRLF lines of at most 72 characters."""
    rng = random.Random(SEED)
    alphabet = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    vocabulary = [
        "".join(rng.choices(alphabet, weights, k=rng.randint(1, 11))) for _ in range(6000)
    ]
    out: list[str] = []
    size = 0
    while size < 2_000_000:
        words: list[str] = []
        width = 0
        while True:
            word = rng.choice(vocabulary)
            if width + len(word) + 1 > 72:
                break
            words.append(word)
            width += len(word) + 1
        line = " ".join(words) + ("." if rng.random() < 0.08 else "")
        out.append(line)
        size += len(line) + 2
        if rng.random() < 0.1:
            out.append("")
    return ("\r\n".join(out) + "\r\n").encode()


def _text(rng: random.Random, n: int) -> bytes:
    pool = _text_pool()
    start = pool.index(b"\r\n", rng.randrange(0, len(pool) - n - 200)) + 2
    end = pool.index(b"\r\n", start + max(n, 1)) + 2
    return pool[start:end]


def _attachment(rng: random.Random, raw: int) -> bytes:
    return base64.encodebytes(rng.randbytes(raw)).replace(b"\n", b"\r\n")


def message(index: int, rcpt: str, seed: int = SEED) -> bytes:
    rng = random.Random(seed * 1000003 + index)
    kind = rng.random()
    subject = _text(rng, 20).split(b"\r\n")[0][:50].decode()
    head = (
        f"From: Sender {index % 97} <sender{index % 97}@bench.test>\r\n"
        f"To: <{rcpt}>\r\n"
        f"Subject: Bench {index} {subject}\r\n"
        f"Date: {email.utils.formatdate(1700000000 + index * 7)}\r\n"
        f"Message-ID: <bench-{seed}-{index}@bench.test>\r\n"
        "MIME-Version: 1.0\r\n"
    )
    if kind < 0.70:
        target = int(rng.uniform(3000, 5000))
        body = _text(rng, target - len(head) - 60)
        return (head + "Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode() + body
    if kind < 0.95:
        target = int(rng.uniform(30000, 50000))
        text = _text(rng, int(rng.uniform(4000, 10000)))
        raw = max(1000, int((target - len(head) - len(text) - 400) * 57 / 78))
        mime = "application/octet-stream"
    else:
        target = int(rng.uniform(320000, 480000))
        text = _text(rng, 2000)
        raw = int((target - len(head) - len(text) - 400) * 57 / 78)
        mime = "application/pdf"
    boundary = f"b-{seed}-{index}"
    return (
        (
            head
            + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
            + f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        ).encode()
        + text
        + (
            f"\r\n--{boundary}\r\nContent-Type: {mime}\r\nContent-Transfer-Encoding: base64\r\n"
            f'Content-Disposition: attachment; filename="file{index}.bin"\r\n\r\n'
        ).encode()
        + _attachment(rng, raw)
        + f"\r\n--{boundary}--\r\n".encode()
    )


def messages(count: int, rcpt: str, base: int = 0) -> list[bytes]:
    return [message(base + i, rcpt) for i in range(count)]


def ceiling(payloads: list[bytes], directory: str | None = None) -> tuple[float, float]:
    """(messages/s, MB/s) writing and fsyncing each payload as its own file."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        started = time.perf_counter()
        for i, data in enumerate(payloads):
            fd = os.open(os.path.join(tmp, str(i)), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        dirfd = os.open(tmp, os.O_RDONLY)
        os.fsync(dirfd)
        os.close(dirfd)
        seconds = time.perf_counter() - started
    total = sum(len(p) for p in payloads)
    return len(payloads) / seconds, total / seconds / 1e6
