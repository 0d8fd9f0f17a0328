"""Outputs in Amazon S3 (or an S3-compatible server): ``s3://bucket/key``, through boto3.

A file up to the part size is one PutObject with its Content-MD5; a larger one a multipart upload,
each part with its Content-MD5, whose progress (the UploadId, the parts done) is kept in a small JSON
file under ``<scratch>/.uploads`` so that a run killed mid-upload continues the same upload when run
again. Creation is conditional (``If-None-Match: *`` on PutObject and CompleteMultipartUpload), as is
replacing one version (``If-Match``). The flexible checksums botocore adds by default are turned off
(``request_checksum_calculation="when_required"``): the MD5s are the checksums, and CRC32C would need
``botocore[crt]``.

Credentials and the endpoint come from boto3's standard chain (``AWS_*`` variables, profiles, instance
roles; ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for another server). botocore retries a request
whose connection dropped.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import mimetypes
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

try:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
except ImportError as e:  # pragma: no cover - the s3 extra is installed in the tests
    raise ImportError(f"s3:// outputs need boto3 ({e}): pip install 'ilsvrc-assets[s3]'") from e

from ilsvrc_assets import fileio
from ilsvrc_assets.storage.objects import (
    MD5_KEY,
    WRITER_KEY,
    ChecksumMismatch,
    ObjectConflict,
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
# A part is held in memory while it is sent: 16 uploads at once (ilsvrc_assets.bucket) hold 256 MiB.
PART_SIZE = 16 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10_000
STALE_UPLOAD = timedelta(days=1)
"""An unfinished multipart upload this host knows nothing of is another host's work in progress until
it is this old."""

_local = threading.local()
_uploading: set[str] = set()
"""The UploadIds this process is sending parts of right now (remove_partial leaves them alone)."""


def client() -> Any:
    """This thread's S3 client, made on first use in this process (a forked child makes its own) and
    again when the endpoint variables change."""
    key = (os.getpid(), os.environ.get("AWS_ENDPOINT_URL_S3"), os.environ.get("AWS_ENDPOINT_URL"))
    cached = getattr(_local, "client", None)
    if cached is None or cached[0] != key:
        config = Config(request_checksum_calculation="when_required")
        cached = _local.client = (key, boto3.session.Session().client("s3", config=config))
    return cached[1]


class S3Store(ObjectStore):
    """``s3://`` outputs. ``part_size``: files larger than this are multipart uploads of parts this
    size (at least 5 MiB). ``on_part(url, part, parts)`` is called after each part sent."""

    scheme = "s3"

    def __init__(
        self,
        scratch: str | os.PathLike[str] | None = None,
        *,
        part_size: int = PART_SIZE,
        on_part: Callable[[str, int, int], None] | None = None,
    ):
        super().__init__(scratch)
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts are at least {MIN_PART_SIZE} bytes (5 MiB), not {part_size}")
        self.part_size = part_size
        self.on_part = on_part

    # --- Reading and listing --------------------------------------------------------------------

    def info(self, url: str) -> ObjectInfo | None:
        found = self._head(self._url(url))
        return None if found is None else found[0]

    def _head(self, url: str) -> tuple[ObjectInfo, dict[str, str]] | None:
        """The object at ``url`` and its metadata, or None."""
        bucket, key = split_url(url)
        try:
            head = client().head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            if _status(e) == 404:
                return None
            raise _error(e, url, "reading its metadata") from e
        except BotoCoreError as e:
            raise _error(e, url, "reading its metadata") from e
        metadata = head.get("Metadata", {})
        return _info(url, head["ETag"], head["ContentLength"], head, metadata), metadata

    def listing(self, url_prefix: str) -> Iterator[ObjectInfo]:
        bucket, prefix = split_url(self._url(url_prefix))
        try:
            for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    etag = item["ETag"].strip('"')
                    md5 = etag if "-" not in etag else None  # KMS-encrypted objects: see _etag_is_md5
                    yield ObjectInfo(f"s3://{bucket}/{item['Key']}", item["Size"], md5, etag, None, etag)
        except (ClientError, BotoCoreError) as e:
            raise _error(e, url_prefix, "listing") from e

    @contextmanager
    def open_read(self, url: str) -> Iterator[IO[bytes]]:
        bucket, key = split_url(self._url(url))
        try:
            body = client().get_object(Bucket=bucket, Key=key)["Body"]
        except ClientError as e:
            if _code(e) in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{url}: no such object") from e
            raise _error(e, url, "reading it") from e
        except BotoCoreError as e:
            raise _error(e, url, "reading it") from e
        try:
            yield io.BufferedReader(_BodyReader(body), buffer_size=fileio.CHUNK)
        finally:
            body.close()

    def remove(self, url: str) -> None:
        bucket, key = split_url(self._url(url))
        try:
            client().delete_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as e:
            raise _error(e, url, "removing it") from e

    # --- Writing ----------------------------------------------------------------------------------

    def put_bytes(
        self, url: str, data: bytes, *, replace: str | None = None, overwrite: bool = False
    ) -> ObjectInfo:
        url = self._url(url)
        return self._put(url, data, hashlib.md5(data).hexdigest(), _version(replace), overwrite, writer_tag())

    def _upload(
        self, local: Path, url: str, md5: str, replace: str | None, overwrite: bool, resumable: bool
    ) -> ObjectInfo:
        replace = _version(replace)
        size = local.stat().st_size
        if size <= self.part_size:
            data = local.read_bytes()
            got = hashlib.md5(data).hexdigest()
            if got != md5:
                raise local_mismatch(url, local, md5, got)
            return self._put(url, data, md5, replace, overwrite, writer_tag())
        return _MultipartUpload(self, local, url, md5, size, replace, overwrite, resumable).run()

    def _put(
        self, url: str, data: bytes, md5: str, replace: str | None, overwrite: bool, writer: str
    ) -> ObjectInfo:
        """One PutObject of ``data`` (whose MD5 is ``md5``), conditional, checked."""
        bucket, key = split_url(url)
        try:
            response = client().put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
                ContentType=_content_type(key),
                Metadata={WRITER_KEY: writer, MD5_KEY: md5},
                **_condition(replace, overwrite),
            )
        except ClientError as e:
            if _code(e) == "BadDigest":  # the server saw other bytes than the Content-MD5 says
                raise stored_mismatch(url, f"MD5 {md5}", "a different MD5 (BadDigest)", False) from e
            if _status(e) in (404, 409, 412) and not overwrite and _code(e) != "NoSuchBucket":
                return self._settle_conflict(url, md5, replace, writer, e)
            raise _error(e, url, "uploading it") from e
        except BotoCoreError as e:
            raise _error(e, url, "uploading it") from e
        etag = response["ETag"].strip('"')
        if _etag_is_md5(response) and etag != md5:
            self._remove_version(url, etag)
            raise stored_mismatch(url, f"MD5 {md5}", f"ETag {etag}", True)
        return _info(url, response["ETag"], len(data), response, {WRITER_KEY: writer, MD5_KEY: md5})

    def _settle_conflict(
        self, url: str, md5: str, replace: str | None, writer: str, error: ClientError
    ) -> ObjectInfo:
        """A conditional write was refused: success if the object there is this very upload (a retried
        request whose first attempt had succeeded), else :class:`ObjectConflict` naming the winner."""
        ours = self._ours(url, md5, writer)
        if ours is not None:
            return ours
        winner = self.info(url)
        if winner is None and replace is None:  # refused, yet nothing is there: a 409 of a concurrent write
            raise _error(error, url, "uploading it") from error
        raise conflict(url, md5, replace, winner) from error

    def _ours(self, url: str, md5: str, writer: str) -> ObjectInfo | None:
        """The object at ``url`` if it is the upload of ``md5`` by ``writer``."""
        found = self._head(url)
        if found is None or found[1].get(WRITER_KEY) != writer or found[1].get(MD5_KEY) != md5:
            return None
        return found[0]

    def _remove_version(self, url: str, etag: str) -> None:
        """Remove ``url`` if it is still version ``etag`` (another writer's newer version stays)."""
        bucket, key = split_url(url)
        try:
            client().delete_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
        except ClientError as e:
            if _status(e) not in (404, 412):
                raise _error(e, url, "removing its damaged upload") from e

    # --- Partial uploads --------------------------------------------------------------------------

    def remove_partial(self, folder: str | os.PathLike[str]) -> int:
        """Abort the unfinished multipart uploads under ``folder`` that nobody will finish: those whose
        resume state here names a writer that is gone and a local file that is gone or changed, and
        those unknown here and older than a day (younger ones may be another host's work in progress).
        Return how many were aborted. Staged files of dead writers in the scratch folder go too."""
        url = self._url(folder)
        bucket, prefix = split_url(url.rstrip("/") + "/")
        states = _states_by_upload(self._uploads_dir())
        now = datetime.now(timezone.utc)
        aborted = 0
        try:
            pages = client().get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for upload in page.get("Uploads", ()):
                    state_path, state = states.get(upload["UploadId"], (None, None))
                    if state is not None:
                        if _state_live(state):
                            continue
                    elif now - upload["Initiated"] < STALE_UPLOAD:
                        continue
                    with suppress(ClientError):
                        client().abort_multipart_upload(
                            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted += 1
                    if state_path is not None:
                        state_path.unlink(missing_ok=True)
        except (ClientError, BotoCoreError) as e:
            raise _error(e, url, "listing its unfinished uploads") from e
        self._remove_dead_staged_files()
        return aborted

    def _uploads_dir(self) -> Path:
        return self.scratch / ".uploads"


class _MultipartUpload:
    """One file's multipart upload, resumable across processes through its state file."""

    def __init__(
        self,
        store: S3Store,
        local: Path,
        url: str,
        md5: str,
        size: int,
        replace: str | None,
        overwrite: bool,
        resumable: bool,
    ):
        self.store, self.local, self.url, self.md5, self.size = store, local, url, md5, size
        self.replace, self.overwrite, self.resumable = replace, overwrite, resumable
        self.bucket, self.key = split_url(url)
        # Parts of the configured size, grown when the file would need more than S3's 10,000.
        self.part_size = max(store.part_size, math.ceil(size / MAX_PARTS / MiB) * MiB)
        self.parts_total = math.ceil(size / self.part_size)
        self.state_path = store._uploads_dir() / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".json")
        self.state: dict[str, Any] = {}

    def run(self) -> ObjectInfo:
        try:
            finished = self._resume()
            if finished is not None:  # completed by a run killed before it could forget the state
                self.state_path.unlink(missing_ok=True)
                return finished
            if not self.state:
                self._start()
            _uploading.add(self.state["upload_id"])
            return self._complete(self._send_parts())
        except (ChecksumMismatch, ObjectConflict):
            self._abort()
            raise
        except (ClientError, BotoCoreError) as e:
            # The upload and its state are kept for the next run to continue.
            upload = self.state.get("upload_id", "not started")
            raise _error(e, self.url, f"uploading it (multipart upload {upload})") from e
        finally:
            _uploading.discard(self.state.get("upload_id", ""))

    def _resume(self) -> ObjectInfo | None:
        """Take up the upload of this file to this URL that a previous run left, narrowed to the parts
        the server lists with the ETags sent; return the object if that upload was in fact completed."""
        state = _read_json(self.state_path)
        if state is None:
            return None
        self.state = state
        if (state.get("md5"), state.get("size"), state.get("part_size")) != (
            self.md5,
            self.size,
            self.part_size,
        ):
            self._abort()  # another file's upload to this URL: nobody will finish it
            return None
        listed: dict[int, tuple[str, int]] = {}
        try:
            pages = client().get_paginator("list_parts")
            for page in pages.paginate(Bucket=self.bucket, Key=self.key, UploadId=state["upload_id"]):
                for part in page.get("Parts", ()):
                    listed[part["PartNumber"]] = (part["ETag"].strip('"'), part["Size"])
        except ClientError as e:
            if _code(e) != "NoSuchUpload":
                raise
            finished = self.store._ours(self.url, self.md5, state["writer"])
            if finished is not None:
                return finished
            self.state = {}  # aborted meanwhile: start again
            self.state_path.unlink(missing_ok=True)
            return None
        state["parts"] = {
            n: part
            for n, part in state["parts"].items()
            if listed.get(int(n)) == (part["etag"], self._part_length(int(n)))
        }
        state["pid"], state["resumable"] = os.getpid(), self.resumable
        self._save()
        return None

    def _start(self) -> None:
        if not self.overwrite:
            # Refused at once rather than after gigabytes are sent (the completion's condition decides).
            found = self.store.info(self.url)
            if self.replace is None and found is not None:
                raise conflict(self.url, self.md5, None, found)
            if self.replace is not None and (found is None or found.version != self.replace):
                raise conflict(self.url, self.md5, self.replace, found)
        writer = writer_tag()
        response = client().create_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            ContentType=_content_type(self.key),
            Metadata={WRITER_KEY: writer, MD5_KEY: self.md5},
        )
        self.state = {
            "url": self.url,
            "upload_id": response["UploadId"],
            "local": str(self.local.absolute()),
            "md5": self.md5,
            "size": self.size,
            "part_size": self.part_size,
            "etag_is_md5": _etag_is_md5(response),
            "writer": writer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "resumable": self.resumable,
            "parts": {},
        }
        self._save()

    def _part_length(self, number: int) -> int:
        return min(self.part_size, self.size - (number - 1) * self.part_size)

    def _send_parts(self) -> list[bytes]:
        """Send the parts the server does not have yet; return every part's MD5 digest. The whole file
        is hashed in the same pass (the parts sent before are read again, not sent), and the last part
        is not sent unless it hashes to the writer's MD5."""
        whole = hashlib.md5()
        digests = []
        with open(self.local, "rb") as f:
            for number in range(1, self.parts_total + 1):
                data = f.read(self.part_size)
                whole.update(data)
                digest = hashlib.md5(data)
                digests.append(digest.digest())
                sent = self.state["parts"].get(str(number))
                if sent is not None and sent["md5"] == digest.hexdigest():
                    continue
                if number == self.parts_total and whole.hexdigest() != self.md5:
                    raise local_mismatch(self.url, self.local, self.md5, whole.hexdigest())
                etag = (
                    client()
                    .upload_part(
                        Bucket=self.bucket,
                        Key=self.key,
                        UploadId=self.state["upload_id"],
                        PartNumber=number,
                        Body=data,
                        ContentMD5=base64.b64encode(digest.digest()).decode(),
                    )["ETag"]
                    .strip('"')
                )
                if self.state["etag_is_md5"] and etag != digest.hexdigest():
                    raise stored_mismatch(
                        self.url, f"MD5 {digest.hexdigest()} for part {number}", etag, False
                    )
                self.state["parts"][str(number)] = {"etag": etag, "md5": digest.hexdigest()}
                self._save()
                if self.store.on_part is not None:
                    self.store.on_part(self.url, number, self.parts_total)
        if whole.hexdigest() != self.md5:  # the file changed where a part sent earlier was
            raise local_mismatch(self.url, self.local, self.md5, whole.hexdigest())
        return digests

    def _complete(self, digests: list[bytes]) -> ObjectInfo:
        parts = [
            {"PartNumber": int(n), "ETag": f'"{part["etag"]}"'}
            for n, part in sorted(self.state["parts"].items(), key=lambda item: int(item[0]))
        ]
        try:
            response = client().complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.state["upload_id"],
                MultipartUpload={"Parts": parts},
                **_condition(self.replace, self.overwrite),
            )
        except ClientError as e:
            if _code(e) == "NoSuchUpload" or (_status(e) in (404, 409, 412) and not self.overwrite):
                # Refused, or a retried completion whose first attempt had succeeded.
                ours = self.store._settle_conflict(self.url, self.md5, self.replace, self.state["writer"], e)
                self.state_path.unlink(missing_ok=True)
                return ours
            raise
        self.state_path.unlink(missing_ok=True)
        etag = response["ETag"].strip('"')
        expected = f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"
        if self.state["etag_is_md5"] and etag != expected:
            self.store._remove_version(self.url, etag)
            raise stored_mismatch(self.url, f"ETag {expected}", f"ETag {etag}", True)
        found = self.store.info(self.url)
        if found is not None and found.version == etag and found.size != self.size:
            self.store._remove_version(self.url, etag)
            raise stored_mismatch(self.url, f"{self.size} bytes", f"{found.size} bytes", True)
        if found is None or found.version != etag:  # replaced or removed in the instant since
            raise conflict(self.url, self.md5, self.replace, found)
        return found

    def _abort(self) -> None:
        upload_id = self.state.get("upload_id")
        if upload_id:
            with suppress(ClientError, BotoCoreError):
                client().abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        self.state_path.unlink(missing_ok=True)
        self.state = {}

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_text(self.state_path, json.dumps(self.state))


def _states_by_upload(folder: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The resume states kept in ``folder``, by UploadId."""
    states = {}
    if folder.is_dir():
        for path in folder.glob("*.json"):
            state = _read_json(path)
            if state is not None and "upload_id" in state:
                states[state["upload_id"]] = (path, state)
    return states


def _state_live(state: dict[str, Any]) -> bool:
    """Whether an upload's writer is still sending it, or a later run can still continue it (its local
    file is there, unchanged in size)."""
    pid = int(state.get("pid", 0))
    if pid == os.getpid():
        if state.get("upload_id") in _uploading:
            return True
    elif state.get("host") == socket.gethostname() and fileio.pid_alive(pid):
        return True
    if not state.get("resumable"):
        return False
    try:
        return os.stat(state["local"]).st_size == state["size"]
    except (OSError, KeyError):
        return False


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _condition(replace: str | None, overwrite: bool) -> dict[str, str]:
    if overwrite:
        return {}
    if replace is not None:
        return {"IfMatch": f'"{replace}"'}
    return {"IfNoneMatch": "*"}


def _version(replace: str | None) -> str | None:
    """An ETag as :class:`ObjectInfo` gives it (quotes stripped), whether given with quotes or not."""
    return None if replace is None else replace.strip('"')


def _etag_is_md5(response: dict[str, Any]) -> bool:
    """Whether the ETag S3 returned is made of MD5s: not for KMS or customer-key encryption."""
    return not str(response.get("ServerSideEncryption", "")).startswith("aws:kms") and not response.get(
        "SSECustomerAlgorithm"
    )


def _info(url: str, etag: str, size: int, response: dict[str, Any], metadata: dict[str, str]) -> ObjectInfo:
    etag = etag.strip('"')
    md5 = etag if "-" not in etag and _etag_is_md5(response) else None
    return ObjectInfo(url, size, md5, etag, metadata.get(WRITER_KEY), etag, metadata.get(MD5_KEY))


def _content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _status(e: ClientError) -> int | None:
    return e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")


def _error(e: Exception, url: str, doing: str) -> ObjectStoreError:
    """An :class:`ObjectStoreError` naming ``url`` and the fix (never a credential)."""
    bucket = split_url(url)[0]
    if isinstance(e, NoCredentialsError):
        return ObjectStoreError(
            f"{url}: no AWS credentials found while {doing}: set them the standard way (AWS_ACCESS_KEY_ID "
            f"and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role)"
        )
    if not isinstance(e, ClientError):
        return ObjectStoreError(f"{url}: {doing} failed: {e}; run again once the store is reachable")
    code, status = _code(e), _status(e)
    message = e.response.get("Error", {}).get("Message", "")
    if code == "NoSuchBucket":
        return ObjectStoreError(
            f"{url}: bucket {bucket} does not exist ({doing}): create the bucket or fix ILSVRC_OUTPUT_URL"
        )
    if status in (401, 403) or code in (
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
    ):
        return ObjectStoreError(
            f"{url}: access denied ({code or status}) while {doing}: check the credentials of the standard "
            f"chain (AWS_* variables, profiles, instance role) and the bucket's policy"
        )
    return ObjectStoreError(f"{url}: {doing} failed: {code or status} {message}".rstrip())


class _BodyReader(io.RawIOBase):
    """botocore's streaming body as a raw file (for :class:`io.BufferedReader`)."""

    def __init__(self, body: Any):
        self.body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
