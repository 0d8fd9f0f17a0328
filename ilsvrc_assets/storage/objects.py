"""What the object stores (``s3://``, ``gs://``) share: URLs, the object API the pipeline calls, and the
:class:`~ilsvrc_assets.storage.OutputStore` methods built on it.

An object store publishes a file in one step the store makes atomic (a PutObject, the completion of
a multipart upload, the last chunk of a resumable session), so a reader never sees a partial object.
Every upload is checked twice: the bytes read from the local file must hash to the MD5 its writer
computed while writing it (else nothing is published), and what the store reports for the new object
(its MD5, or S3's multipart ETag, and its size) must match what was sent (else the object is removed
again). Uploads can be conditional (create only if absent, or replace one exact version), so two
writers of one object cannot silently overwrite each other: the second gets :class:`ObjectConflict`
naming the first.

Each object carries two metadata entries: ``ilsvrc-writer`` (host, pid and time of the upload, to name
the winner of a conflict) and ``ilsvrc-md5`` (the MD5 its writer computed).
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import socket
import tempfile
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, ClassVar

from ilsvrc_assets import fileio
from ilsvrc_assets.storage import Location, OutputStore

WRITER_KEY = "ilsvrc-writer"
MD5_KEY = "ilsvrc-md5"
STAGE_PREFIX = ".ilsvrc-stage-"
SCHEMES = ("s3", "gs")


@dataclass(frozen=True)
class ObjectInfo:
    """One version of one object, as the store reports it."""

    url: str
    """``s3://bucket/key`` or ``gs://bucket/key``."""
    size: int
    md5: str | None
    """Hex MD5 of the whole object when the store reports one (GCS ``md5Hash``, S3's ETag of a
    single-part upload without KMS encryption); None for an S3 multipart upload."""
    version: str
    """What identifies this exact version: the GCS generation, the S3 ETag (quotes stripped)."""
    writer: str | None
    """The ``ilsvrc-writer`` metadata its uploader stored (host, pid, time), if any. S3 listings do
    not carry metadata: None there (:meth:`ObjectStore.info` has it)."""
    etag: str | None = None
    """The store's own checksum: the S3 ETag (``<hex>-<parts>`` for multipart), the GCS CRC32C (base64)."""
    written_md5: str | None = None
    """The ``ilsvrc-md5`` metadata its uploader stored: the MD5 its writer computed, which the upload
    verified (what tells an S3 multipart object's content, whose ETag is no MD5). Like ``writer``, not
    in S3 listings."""

    @property
    def content_md5(self) -> str | None:
        """The hex MD5 of the object's bytes: the store's own, else the one its upload verified."""
        return self.md5 or self.written_md5


class ObjectConflict(Exception):
    """Another writer published the object first (or replaced the version this upload was to replace);
    the message names the object and the winner, and says this copy was not published."""


class ChecksumMismatch(Exception):
    """The bytes read or stored differ from the MD5 their writer computed; the message names the object,
    both checksums, and says the object was not published or was removed."""


class ObjectStoreError(Exception):
    """Any other failure of the store (missing bucket, access denied, the network); the message names
    the object and what to do."""


def scratch_dir() -> Path:
    """``ILSVRC_SCRATCH_DIR``, else the system's temporary folder."""
    from ilsvrc_assets.settings import ENV_SCRATCH_DIR

    return Path(os.environ.get(ENV_SCRATCH_DIR) or tempfile.gettempdir())


def split_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/a/b"`` -> ``("bucket", "a/b")``."""
    scheme, sep, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    if not sep or scheme not in SCHEMES or not bucket:
        raise ValueError(f"{url}: not an object URL (s3://bucket/key or gs://bucket/key)")
    return bucket, key


def join(url: str, *parts: str) -> str:
    """``join("gs://b/out", "shards", "x.tfrecord")`` -> ``"gs://b/out/shards/x.tfrecord"``."""
    return "/".join([url.rstrip("/"), *(part.strip("/") for part in parts if part.strip("/"))])


def writer_tag() -> str:
    """This upload's ``ilsvrc-writer`` metadata: who wrote it, to name in a conflict."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"{socket.gethostname()} pid {os.getpid()} at {now}"


class ObjectStore(OutputStore):
    """The object API shared by :class:`~ilsvrc_assets.storage.s3.S3Store` and
    :class:`~ilsvrc_assets.storage.gcs.GCSStore`, and the :class:`OutputStore` methods built on it.

    ``scratch`` is the local folder for files staged before upload (:meth:`open_write`,
    :meth:`staged_file`) and for S3's resume state (``<scratch>/.uploads``); by default
    ``ILSVRC_SCRATCH_DIR``, else the system's temporary folder.
    """

    scheme: ClassVar[str]

    def __init__(self, scratch: str | os.PathLike[str] | None = None):
        self.scratch = Path(scratch) if scratch else scratch_dir()

    # --- The object API -----------------------------------------------------------------------

    def upload_file(
        self, local: Path, url: str, md5: str, *, replace: str | None = None, overwrite: bool = False
    ) -> ObjectInfo:
        """Publish local file ``local`` as ``url``; ``md5`` is the hex MD5 its writer computed.

        Created only if absent unless ``replace`` (replace only that version) or ``overwrite``
        (unconditional). Raises :class:`ObjectConflict` when the condition fails and
        :class:`ChecksumMismatch` when the file does not hash to ``md5`` or the store received other
        bytes; in both cases nothing of this upload stays visible.
        """
        return self._upload(Path(local), self._url(url), md5.lower(), replace, overwrite, resumable=True)

    @abstractmethod
    def put_bytes(
        self, url: str, data: bytes, *, replace: str | None = None, overwrite: bool = False
    ) -> ObjectInfo:
        """Publish ``data`` as ``url`` in one request, with the conditions of :meth:`upload_file`."""

    @abstractmethod
    def info(self, url: str) -> ObjectInfo | None:
        """The object at ``url`` (with its writer metadata), or None when there is none."""

    @abstractmethod
    def listing(self, url_prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose URL starts with ``url_prefix`` (a string prefix, as the stores match it:
        end it with ``/`` for a folder), at any depth, a page at a time."""

    @abstractmethod
    def open_read(self, url: str) -> AbstractContextManager[IO[bytes]]:
        """A binary file reading ``url`` as a stream, a chunk at a time; FileNotFoundError if missing."""

    def read_bytes(self, url: str) -> bytes:
        """The whole object; FileNotFoundError if missing."""
        with self.open_read(url) as f:
            return f.read()

    @abstractmethod
    def remove(self, url: str) -> None:
        """Delete ``url``; an object already gone is fine."""

    @abstractmethod
    def _upload(
        self, local: Path, url: str, md5: str, replace: str | None, overwrite: bool, resumable: bool
    ) -> ObjectInfo:
        """:meth:`upload_file`; ``resumable`` False for staged files nobody will upload again."""

    # --- OutputStore ----------------------------------------------------------------------------

    @contextmanager
    def open_write(self, location: Location, mode: str = "wb") -> Iterator[IO]:
        """A file in the scratch folder, hashed as written, uploaded (unconditionally) when the block
        succeeds; discarded, with the object as it was, when it raises. Modes ``"wb"`` and ``"w"``
        (UTF-8)."""
        url = self._url(location)
        if mode not in ("wb", "w"):
            raise ValueError(f"{url}: an object is written whole, in mode 'wb' or 'w', not {mode!r}")
        with self._staged(url) as path, open(path, "xb") as raw:
            hashed = _HashingFile(raw)
            buffered = io.BufferedWriter(hashed, buffer_size=fileio.CHUNK)
            f: IO = buffered if mode == "wb" else io.TextIOWrapper(buffered, encoding="utf-8")
            try:
                yield f
                f.close()  # flushes the last bytes through the hash
            finally:
                if not f.closed:
                    f.close()
            raw.close()
            self._upload(path, url, hashed.md5.hexdigest(), None, True, resumable=False)

    @contextmanager
    def staged_file(self, location: Location) -> Iterator[Path]:
        """A path in the scratch folder (not yet created); its file is hashed and uploaded
        (unconditionally) when the block succeeds, and removed in any case."""
        url = self._url(location)
        with self._staged(url) as path:
            yield path
            self._upload(path, url, fileio.md5_file(path), None, True, resumable=False)

    def write_into(self, folder: str, name: str, data: bytes) -> None:
        self.put_bytes(f"{folder.rstrip('/')}/{name}", data, overwrite=True)

    # --- Shared plumbing ------------------------------------------------------------------------

    def _url(self, location: Location) -> str:
        url = os.fspath(location)
        if not url.startswith(f"{self.scheme}://"):
            raise ValueError(f"{url}: {type(self).__name__} serves {self.scheme}:// URLs only")
        split_url(url)
        return url

    @contextmanager
    def _staged(self, url: str) -> Iterator[Path]:
        """A unique path in the scratch folder named after ``url``'s last part and this process;
        removed when the block ends."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        name = url.rstrip("/").rsplit("/", 1)[-1][-100:]
        path = self.scratch / f"{STAGE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{name}"
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _remove_dead_staged_files(self) -> int:
        """Remove the staged files that killed writers left in the scratch folder."""
        removed = 0
        if not self.scratch.is_dir():
            return 0
        for entry in self.scratch.glob(f"{STAGE_PREFIX}*"):
            try:
                pid = int(entry.name[len(STAGE_PREFIX) :].split("-", 1)[0])
            except ValueError:
                continue
            if not fileio.pid_alive(pid):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed


def conflict(url: str, md5: str, replace: str | None, winner: ObjectInfo | None) -> ObjectConflict:
    """The :class:`ObjectConflict` for an upload of ``url`` whose condition failed."""
    if winner is None:
        found = "it no longer exists"
    else:
        writer = winner.writer or "a writer without ilsvrc-writer metadata"
        found = f"now version {winner.version}, written by {writer}"
    if replace is None:
        what = f"another writer published it first ({found})"
    else:
        what = f"it is no longer version {replace}, which this upload was to replace ({found})"
    return ObjectConflict(
        f"{url}: {what}; this copy (MD5 {md5}) was not published. Two runs may be writing the same "
        f"output: let one finish, or remove the object to publish this one"
    )


def local_mismatch(url: str, local: Path, md5: str, got: str) -> ChecksumMismatch:
    """The :class:`ChecksumMismatch` for a local file that no longer hashes to its writer's MD5."""
    return ChecksumMismatch(
        f"{url}: the local file {local} has MD5 {got}, but its writer computed {md5}: it changed or was "
        f"damaged after it was written (the scratch or data disk?); the object was not published. "
        f"Run again to write it anew"
    )


def stored_mismatch(url: str, expected: str, reported: str, removed: bool) -> ChecksumMismatch:
    """The :class:`ChecksumMismatch` for an object the store received differently from what was sent."""
    fate = "the object was removed" if removed else "the object was not published"
    return ChecksumMismatch(
        f"{url}: the store reports {reported} for the uploaded object, {expected} was sent: the bytes "
        f"were damaged on the way; {fate}. Run again to upload it anew"
    )


class _HashingFile(io.RawIOBase):
    """A write-only raw file that hashes what passes through it into ``file``."""

    def __init__(self, file: IO[bytes]):
        self.file = file
        self.md5 = hashlib.md5()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self.file.write(data)
        self.md5.update(data)
        return len(data)
