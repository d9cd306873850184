"""Checksums and atomic writes: the one home of both, for the runtime and the pipeline alike.

    with atomic_path(Path("out/scores.csv")) as tmp:   # write tmp; renamed onto the target
        tmp.write_text("...")                          # only if the block succeeds
    pending = AtomicFile(Path("out/big.parquet"))      # the same, open-ended: a writer that
    pending.commit()  # or pending.discard()           # outlives one block (streamed rows)
    with atomic_folder(Path("site")) as tmp_dir: ...   # a folder that appears whole or not at all
    sha256_file(Path("model.onnx"))                    # hex digest, read in 1 MiB blocks

A temporary file sits beside its target as ``.NAME.XXXX.tmpSUFFIX`` (a folder as
``.NAME.XXXX.tmp``, a folder being retired as ``.NAME.old.XXXX``), so a crash leaves the
previous target intact, no half-written file under its name, and leftovers that
``TEMPORARY_GLOBS`` match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMPORARY_GLOB = ".*.tmp*"  # the names AtomicFile and atomic_folder give their temporaries
TEMPORARY_GLOBS = (TEMPORARY_GLOB, ".*.old.*")  # and the folders atomic_folder retires
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # reading the umask means setting it; put it straight back


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    """The sha256 hex digest of the file at ``path``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """The sha256 of ``obj`` as canonical JSON (sorted keys): a fingerprint of settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to the disk (so a rename after it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """A temporary file beside ``target``, renamed onto it by ``commit()``, removed by
    ``discard()``: for writers that stream into it over many calls."""

    def __init__(self, target: Path | str, durable: bool = True) -> None:
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(
            prefix=f".{self.target.stem}.", suffix=f".tmp{self.target.suffix}",
            dir=self.target.parent,
        )  # fmt: skip
        os.close(fd)
        self.path = Path(name)
        self.durable = durable  # fsync before the rename

    def commit(self) -> Path:
        """Rename the finished temporary file onto the target (with the usual file mode)."""
        if self.durable:
            fsync_file(self.path)
        os.chmod(self.path, 0o666 & ~_UMASK)  # mkstemp makes 0600
        os.replace(self.path, self.target)
        return self.target

    def discard(self) -> None:
        """Remove the temporary file (a no-op after ``commit``)."""
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: Path | str, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block
    succeeds."""
    pending = AtomicFile(target, durable)
    try:
        yield pending.path
        pending.commit()
    finally:
        pending.discard()


@contextlib.contextmanager
def atomic_folder(target: Path | str, replace: bool = False) -> Iterator[Path]:
    """Yield a new temporary folder beside ``target``; rename it onto ``target`` only if the
    block succeeds.

    replace: an existing ``target`` is first renamed aside (``.NAME.old.XXXX``), then removed,
    so readers see the old folder or the new one, never a mix; without it ``target`` must not
    exist or be an empty folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private
        if replace and target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)  # onto an empty folder, too
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(target: Path | str, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: Path | str, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: Path | str, obj: Any) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")
