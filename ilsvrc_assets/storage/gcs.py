"""Outputs in Google Cloud Storage: ``gs://bucket/key``, through google-cloud-storage.

A file up to 8 MiB is one request (the library's multipart upload, retried whole on a dropped
connection). A larger one goes through a resumable upload session, driven here chunk by chunk: after a
dropped connection or a server error it asks the session how much it has (the protocol's status
check) and goes on from there, so nothing is sent twice and nothing is lost. The session is opened by
the library (``Blob.create_resumable_upload_session``); its URL authenticates the chunks by itself.

Every upload declares the object's MD5 (``md5Hash``), which the server checks before the object
exists, and its condition: ``ifGenerationMatch=0`` to create only if absent, the generation to replace.
A session never becomes an object unless its last chunk arrives, and the last chunk is not sent
unless the file read hashes to its writer's MD5.

Credentials come from Application Default Credentials; ``STORAGE_EMULATOR_HOST`` points the client at
an emulator (anonymous, with ``GOOGLE_CLOUD_PROJECT`` or a placeholder project).
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

try:
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth
    from google.cloud import storage
    from google.cloud.storage.retry import DEFAULT_RETRY
except ImportError as e:  # pragma: no cover - the gcs extra is installed in the tests
    raise ImportError(
        f"gs:// outputs need google-cloud-storage ({e}): pip install 'ilsvrc-assets[gcs]'"
    ) from e

from ilsvrc_assets.storage.objects import (
    MD5_KEY,
    WRITER_KEY,
    ObjectInfo,
    ObjectStore,
    ObjectStoreError,
    conflict,
    local_mismatch,
    split_url,
    stored_mismatch,
    writer_tag,
)

MiB = 1024 * 1024
SINGLE_REQUEST = 8 * MiB  # up to this, one request (the library's own threshold for multipart uploads)
CHUNK_SIZE = 16 * MiB
"""Bytes per request of a resumable session: a dropped connection costs at most this much again;
fewer, larger requests go faster over a long round trip. A multiple of 256 KiB, as GCS requires."""
CHUNK_QUANTUM = 256 * 1024
MAX_FAILURES = 8  # in a row, with backoff from 1 s doubling to 32 s: about two minutes without progress
TIMEOUT = (60, 300)  # (connect, read) seconds for each chunk

_local = threading.local()
_FAILURES = (api.GoogleAPIError, auth.GoogleAuthError, requests.RequestException)
"""What the library raises once its own retries are spent (or a credential is refused)."""


def client() -> Any:
    """This thread's GCS client, made on first use in this process (a forked child makes its own) and
    again when ``STORAGE_EMULATOR_HOST`` changes."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    key = (os.getpid(), emulator)
    cached = getattr(_local, "client", None)
    if cached is None or cached[0] != key:
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or ("ilsvrc-emulator" if emulator else None)
        try:
            made = storage.Client(project=project)
        except auth.DefaultCredentialsError as e:
            raise ObjectStoreError(
                "gs:// outputs: no Google Cloud credentials found: run `gcloud auth application-default "
                "login`, or set GOOGLE_APPLICATION_CREDENTIALS, or run where a service account is attached"
            ) from e
        cached = _local.client = (key, made)
    return cached[1]


def _http() -> requests.Session:
    """This thread's HTTP session for the chunks of resumable uploads (the session URL is the credential)."""
    cached = getattr(_local, "http", None)
    if cached is None or cached[0] != os.getpid():
        cached = _local.http = (os.getpid(), requests.Session())
    return cached[1]


class GCSStore(ObjectStore):
    """``gs://`` outputs. ``chunk_size``: bytes per request of a resumable upload (files over 8 MiB), a
    multiple of 256 KiB."""

    scheme = "gs"

    def __init__(self, scratch: str | os.PathLike[str] | None = None, *, chunk_size: int = CHUNK_SIZE):
        super().__init__(scratch)
        if chunk_size <= 0 or chunk_size % CHUNK_QUANTUM:
            raise ValueError(
                f"GCS chunks are a multiple of 256 KiB ({CHUNK_QUANTUM} bytes), not {chunk_size}"
            )
        self.chunk_size = chunk_size

    # --- Reading and listing --------------------------------------------------------------------

    def info(self, url: str) -> ObjectInfo | None:
        bucket, key = split_url(self._url(url))
        try:
            blob = client().bucket(bucket).get_blob(key, retry=DEFAULT_RETRY)
        except _FAILURES as e:
            raise _error(e, url, "reading its metadata") from e
        return None if blob is None else _blob_info(url, blob)

    def listing(self, url_prefix: str) -> Iterator[ObjectInfo]:
        bucket, prefix = split_url(self._url(url_prefix))
        try:
            for blob in client().list_blobs(bucket, prefix=prefix, retry=DEFAULT_RETRY):
                yield _blob_info(f"gs://{bucket}/{blob.name}", blob)
        except _FAILURES as e:
            raise _error(e, url_prefix, "listing") from e

    @contextmanager
    def open_read(self, url: str) -> Iterator[IO[bytes]]:
        bucket, key = split_url(self._url(url))
        found = self.info(url)
        if found is None:
            raise FileNotFoundError(f"{url}: no such object")
        # The generation just seen, so that a replacement meanwhile cannot mix two versions' bytes.
        blob = client().bucket(bucket).blob(key, generation=int(found.version))
        try:
            with blob.open("rb", chunk_size=self.chunk_size, retry=DEFAULT_RETRY) as f:
                yield f
        except api.NotFound as e:
            raise FileNotFoundError(f"{url}: no such object (version {found.version} was replaced)") from e
        except _FAILURES as e:
            raise _error(e, url, "reading it") from e

    def read_bytes(self, url: str) -> bytes:
        bucket, key = split_url(self._url(url))
        try:
            return client().bucket(bucket).blob(key).download_as_bytes(checksum="md5", retry=DEFAULT_RETRY)
        except api.NotFound as e:
            raise FileNotFoundError(f"{url}: no such object") from e
        except _FAILURES as e:
            raise _error(e, url, "reading it") from e

    def remove(self, url: str) -> None:
        bucket, key = split_url(self._url(url))
        try:
            client().bucket(bucket).blob(key).delete(retry=DEFAULT_RETRY)
        except api.NotFound:
            pass
        except _FAILURES as e:
            raise _error(e, url, "removing it") from e

    def remove_partial(self, folder: str | os.PathLike[str]) -> int:
        """0: an unfinished resumable session is never an object (GCS forgets it after a week). Staged
        files of dead writers in the scratch folder are removed."""
        self._url(folder)
        self._remove_dead_staged_files()
        return 0

    # --- Writing ----------------------------------------------------------------------------------

    def put_bytes(
        self, url: str, data: bytes, *, replace: str | None = None, overwrite: bool = False
    ) -> ObjectInfo:
        url = self._url(url)
        return self._put(url, data, hashlib.md5(data).hexdigest(), replace, overwrite)

    def _upload(
        self, local: Path, url: str, md5: str, replace: str | None, overwrite: bool, resumable: bool
    ) -> ObjectInfo:
        size = local.stat().st_size
        if size <= SINGLE_REQUEST:
            data = local.read_bytes()
            got = hashlib.md5(data).hexdigest()
            if got != md5:
                raise local_mismatch(url, local, md5, got)
            return self._put(url, data, md5, replace, overwrite)
        return self._upload_in_session(local, url, md5, size, replace, overwrite)

    def _new_blob(self, url: str, md5: str, writer: str) -> Any:
        bucket, key = split_url(url)
        blob = client().bucket(bucket).blob(key)
        blob.md5_hash = base64.b64encode(bytes.fromhex(md5)).decode()  # the server checks it
        blob.metadata = {WRITER_KEY: writer, MD5_KEY: md5}
        blob.content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        return blob

    def _put(self, url: str, data: bytes, md5: str, replace: str | None, overwrite: bool) -> ObjectInfo:
        writer = writer_tag()
        blob = self._new_blob(url, md5, writer)
        try:
            # Retried even with a precondition: a create retried after its first attempt succeeded is
            # refused, and then found to be this very upload (_settle_conflict).
            blob.upload_from_string(
                data,
                content_type=blob.content_type,
                checksum=None,  # the declared md5Hash is the check
                retry=DEFAULT_RETRY,
                **_condition(replace, overwrite),
            )
        except api.PreconditionFailed as e:
            return self._settle_conflict(url, md5, replace, writer, e)
        except api.BadRequest as e:
            if "MD5" in str(e):
                raise stored_mismatch(url, f"MD5 {md5}", "different bytes", False) from e
            raise _error(e, url, "uploading it") from e
        except _FAILURES as e:
            raise _error(e, url, "uploading it") from e
        return self._checked(url, md5, len(data), _blob_info(url, blob), blob.md5_hash)

    def _upload_in_session(
        self, local: Path, url: str, md5: str, size: int, replace: str | None, overwrite: bool
    ) -> ObjectInfo:
        writer = writer_tag()
        blob = self._new_blob(url, md5, writer)
        try:
            session = blob.create_resumable_upload_session(
                content_type=blob.content_type,
                size=size,
                checksum=None,  # the declared md5Hash is the check
                retry=DEFAULT_RETRY,
                **_condition(replace, overwrite),
            )
        except api.PreconditionFailed as e:
            return self._settle_conflict(url, md5, replace, writer, e)
        except _FAILURES as e:
            raise _error(e, url, "starting its upload") from e
        try:
            resource = _Session(session, url, local, md5, size, self.chunk_size).run()
        except _Refused as e:
            return self._settle_conflict(url, md5, replace, writer, e)
        found = _resource_info(url, resource)
        return self._checked(url, md5, size, found, resource.get("md5Hash"))

    def _checked(self, url: str, md5: str, size: int, found: ObjectInfo, md5_hash: str | None) -> ObjectInfo:
        """``found`` if the store reports the MD5 and size sent; else the object is removed (if it is
        still that version) and :class:`ChecksumMismatch` raised."""
        expected = base64.b64encode(bytes.fromhex(md5)).decode()
        if md5_hash == expected and found.size == size:
            return found
        bucket, key = split_url(url)
        try:
            client().bucket(bucket).blob(key).delete(if_generation_match=int(found.version))
        except (api.NotFound, api.PreconditionFailed):
            pass
        reported = f"MD5 {_hex(md5_hash) or 'none'}, {found.size} bytes"
        raise stored_mismatch(url, f"MD5 {md5}, {size} bytes", reported, True)

    def _settle_conflict(
        self, url: str, md5: str, replace: str | None, writer: str, error: Exception
    ) -> ObjectInfo:
        """A conditional write was refused: success if the object there is this very upload (a retried
        request whose first attempt had succeeded), else :class:`ObjectConflict` naming the winner."""
        bucket, key = split_url(url)
        try:
            blob = client().bucket(bucket).get_blob(key, retry=DEFAULT_RETRY)
        except _FAILURES as e:
            raise _error(e, url, "reading the metadata of the object that refused this upload") from error
        winner = None if blob is None else _blob_info(url, blob)
        if blob is not None and winner.writer == writer and (blob.metadata or {}).get(MD5_KEY) == md5:
            return winner
        raise conflict(url, md5, replace, winner) from error


class _Refused(Exception):
    """The session's last chunk was refused: its condition (ifGenerationMatch) failed."""


class _Session:
    """The chunks of one resumable upload session, sent in order, resumed from what the server has
    after a dropped connection or a server error."""

    def __init__(self, session_url: str, url: str, local: Path, md5: str, size: int, chunk_size: int):
        self.session_url, self.url, self.local, self.md5 = session_url, url, local, md5
        self.size, self.chunk_size = size, chunk_size

    def run(self) -> dict[str, Any]:
        """The object's resource once the last chunk is in; :class:`_Refused` if its condition failed."""
        whole = hashlib.md5()
        hashed = offset = failures = 0
        with open(self.local, "rb") as f:
            while True:
                f.seek(offset)
                chunk = f.read(self.chunk_size)
                end = offset + len(chunk)
                if end > hashed:  # each byte hashed once, however often it is sent
                    whole.update(memoryview(chunk)[hashed - offset :])
                    hashed = end
                if end == self.size and whole.hexdigest() != self.md5:
                    self._cancel()
                    raise local_mismatch(self.url, self.local, self.md5, whole.hexdigest())
                try:
                    response = _http().put(
                        self.session_url,
                        data=chunk,
                        headers={"Content-Range": f"bytes {offset}-{end - 1}/{self.size}"},
                        timeout=TIMEOUT,
                    )
                except (requests.ConnectionError, requests.Timeout) as e:
                    failures = self._wait(failures, e)
                    offset, done = self._persisted()
                    if done is not None:
                        return done
                    continue
                if response.status_code == 308:  # chunk in; the server says up to where
                    offset, failures = _range_end(response), 0
                    continue
                if response.status_code in (200, 201):
                    return response.json()
                if response.status_code == 412:
                    raise _Refused(response.text[:300])
                if response.status_code == 400 and "MD5" in response.text:
                    raise stored_mismatch(self.url, f"MD5 {self.md5}", "different bytes", False)
                if response.status_code in (408, 429) or response.status_code >= 500:
                    failures = self._wait(failures, f"HTTP {response.status_code}")
                    offset, done = self._persisted()
                    if done is not None:
                        return done
                    continue
                if response.status_code in (404, 410):
                    raise ObjectStoreError(
                        f"{self.url}: its upload session expired or was cancelled "
                        f"(HTTP {response.status_code}); run again to upload it anew"
                    )
                raise ObjectStoreError(
                    f"{self.url}: uploading it failed: HTTP {response.status_code} {response.text[:300]}"
                )

    def _persisted(self) -> tuple[int, dict[str, Any] | None]:
        """(the offset the server has up to, None), or (size, the object) if the upload is complete:
        the protocol's status check, retried like a chunk."""
        failures = 0
        while True:
            try:
                response = _http().put(
                    self.session_url, headers={"Content-Range": f"bytes */{self.size}"}, timeout=TIMEOUT
                )
            except (requests.ConnectionError, requests.Timeout) as e:
                failures = self._wait(failures, e)
                continue
            if response.status_code == 308:
                return _range_end(response), None
            if response.status_code in (200, 201):
                return self.size, response.json()
            if response.status_code == 412:
                raise _Refused(response.text[:300])
            if response.status_code in (408, 429) or response.status_code >= 500:
                failures = self._wait(failures, f"HTTP {response.status_code}")
                continue
            raise ObjectStoreError(
                f"{self.url}: its upload session cannot be resumed (HTTP {response.status_code}); run "
                f"again to upload it anew"
            )

    def _wait(self, failures: int, why: object) -> int:
        if failures >= MAX_FAILURES:
            raise ObjectStoreError(
                f"{self.url}: the upload made no progress in {MAX_FAILURES + 1} attempts ({why}); nothing "
                f"was published: run again once the store is reachable"
            )
        time.sleep(min(2**failures, 32) * (0.5 + random.random() / 2))
        return failures + 1

    def _cancel(self) -> None:
        try:
            _http().delete(self.session_url, timeout=TIMEOUT)
        except requests.RequestException:
            pass  # a session nobody finishes is forgotten in a week; it is never an object


def _range_end(response: requests.Response) -> int:
    """The next offset from a 308's ``Range: bytes=0-N`` (no header: nothing persisted yet)."""
    header = response.headers.get("Range")
    return int(header.rsplit("-", 1)[1]) + 1 if header else 0


def _condition(replace: str | None, overwrite: bool) -> dict[str, int]:
    if overwrite:
        return {}
    return {"if_generation_match": 0 if replace is None else int(replace)}


def _hex(md5_base64: str | None) -> str | None:
    return base64.b64decode(md5_base64).hex() if md5_base64 else None


def _blob_info(url: str, blob: Any) -> ObjectInfo:
    return ObjectInfo(
        url,
        int(blob.size or 0),
        _hex(blob.md5_hash),
        str(blob.generation),
        (blob.metadata or {}).get(WRITER_KEY),
        blob.crc32c,
        (blob.metadata or {}).get(MD5_KEY),
    )


def _resource_info(url: str, resource: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(
        url,
        int(resource.get("size", 0)),
        _hex(resource.get("md5Hash")),
        str(resource["generation"]),
        (resource.get("metadata") or {}).get(WRITER_KEY),
        resource.get("crc32c"),
        (resource.get("metadata") or {}).get(MD5_KEY),
    )


def _error(e: Exception, url: str, doing: str) -> ObjectStoreError:
    """An :class:`ObjectStoreError` naming ``url`` and the fix (never a credential)."""
    bucket = split_url(url)[0]
    if isinstance(e, api.NotFound):
        return ObjectStoreError(
            f"{url}: bucket {bucket} does not exist ({doing}): create the bucket or fix ILSVRC_OUTPUT_URL"
        )
    if isinstance(e, (api.Forbidden, api.Unauthorized, auth.GoogleAuthError)):
        return ObjectStoreError(
            f"{url}: access denied while {doing} ({type(e).__name__}): check the application default "
            f"credentials (gcloud auth application-default login, GOOGLE_APPLICATION_CREDENTIALS, the "
            f"attached service account) and their roles on the bucket"
        )
    return ObjectStoreError(f"{url}: {doing} failed: {e}; run again once the store is reachable")
