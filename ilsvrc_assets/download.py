"""Downloading the official archives over HTTP(S): streaming, resumable, retried, MD5-checked.

The training archive is 148 GB, so a download must survive a dropped connection without starting
over. Bytes stream into ``<dest>.partial`` (a stable name, so a later run finds and resumes it with a
``Range`` request) while the MD5 is computed on the fly; only a complete file whose MD5 matches is
renamed to ``dest``. A file whose MD5 does not match is moved to ``<dest>.bad-md5`` so that nothing
corrupt ever sits under the final name.

Credentials (``ILSVRC_HTTP_USERNAME``/``ILSVRC_HTTP_PASSWORD`` or ``ILSVRC_HTTP_TOKEN``) travel only in
the ``Authorization`` header; they never appear in URLs, messages, logs or progress reports, and they
are not forwarded when the server redirects to another host.

Standard library only (``urllib.request``), no Dagster.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import BinaryIO
from urllib.error import HTTPError, URLError

from ilsvrc_assets import __version__, fileio
from ilsvrc_assets.fileio import md5_file
from ilsvrc_assets.settings import ENV_HTTP_PASSWORD, ENV_HTTP_TOKEN, ENV_HTTP_URL, ENV_HTTP_USERNAME

try:  # POSIX only; elsewhere concurrent downloads of one file are simply not detected
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
BAD_MD5_SUFFIX = ".bad-md5"
MAX_BACKOFF = 60.0  # seconds; a longer wait only delays the run without helping the server
PROGRESS_INTERVAL = 0.5  # seconds between progress reports (callers log each one)
USER_AGENT = f"ilsvrc_assets/{__version__} (Python urllib)"

_MD5_RE = re.compile(r"[0-9a-f]{32}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)", re.IGNORECASE)


class DownloadError(RuntimeError):
    """A download failed; the message names the URL (without credentials) or file and the fix.

    ``status`` is the HTTP status that ended the download, when one did (401, 403, 404, ...), so
    that callers can treat an optional file that is absent (``not_found``) as no error.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def not_found(self) -> bool:
        """True when the server said there is no file at the URL (HTTP 404 or 410)."""
        return self.status in (404, 410)


@dataclass(frozen=True, repr=False)
class Credentials:
    """HTTP credentials: basic auth (username and password) or a bearer token.

    A token wins when both are given. Values are sent only in the ``Authorization`` header and
    are hidden from ``repr``/``str`` so that they cannot leak into logs or Dagster metadata.
    """

    username: str | None = None
    password: str | None = None
    token: str | None = None  # sent as "Authorization: Bearer <token>"

    def __post_init__(self) -> None:
        # Checked here, not when the header is sent, so that http.client never builds an
        # exception message around a secret; the messages below never include the values.
        for field, value in (("username", self.username), ("password", self.password), ("token", self.token)):
            if value is not None and any(c in value for c in "\r\n\0"):
                raise ValueError(f"Credentials: the {field} contains a line break or NUL character")
        if self.token is not None and (not self.token.isascii() or any(c.isspace() for c in self.token)):
            raise ValueError("Credentials: the token must be ASCII without spaces")
        if self.username is not None and ":" in self.username:
            raise ValueError("Credentials: a basic-auth username cannot contain ':'")
        if self.password is not None and self.username is None and self.token is None:
            raise ValueError(
                f"Credentials: a password was given without a username; set {ENV_HTTP_USERNAME} as well"
            )

    def __repr__(self) -> str:
        def shown(value: str | None) -> str:
            return "None" if value is None else "'***'"

        return f"Credentials(username={self.username!r}, password={shown(self.password)}, token={shown(self.token)})"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Credentials:
        """Read ``ILSVRC_HTTP_USERNAME``, ``ILSVRC_HTTP_PASSWORD`` and ``ILSVRC_HTTP_TOKEN``.

        Empty values count as unset (``export ILSVRC_HTTP_TOKEN=`` is a common way to clear one).
        """
        return cls(
            username=environ.get(ENV_HTTP_USERNAME) or None,
            password=environ.get(ENV_HTTP_PASSWORD) or None,
            token=environ.get(ENV_HTTP_TOKEN) or None,
        )

    @property
    def given(self) -> bool:
        """True when there is anything to send."""
        return self.username is not None or self.token is not None

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header for these credentials, or no headers at all."""
        if self.token is not None:
            return {"Authorization": f"Bearer {self.token}"}
        if self.username is not None:
            pair = f"{self.username}:{self.password or ''}".encode()
            return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        return {}


def archive_url(base_url: str, name: str) -> str:
    """Join a base URL (with or without a trailing slash) and a file name.

    Unlike ``urllib.parse.urljoin``, a base without a trailing slash keeps its last segment:
    ``archive_url("https://image-net.org/data/ILSVRC/2012", "x.tar")`` ends in ``/2012/x.tar``.
    """
    base = base_url.strip()
    if not base:
        raise ValueError(
            f"archive_url: the base URL is empty; set {ENV_HTTP_URL} to the folder holding the archives"
        )
    parts = urllib.parse.urlsplit(base)
    # Join on the path only, so a query string on the base (a signed URL) stays at the end.
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    path += urllib.parse.quote(name.lstrip("/"), safe="/")
    return urllib.parse.urlunsplit(parts._replace(path=path))


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, fit for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def partial_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` collect while downloading (stable, so a later run resumes)."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


def bad_md5_path(dest: Path) -> Path:
    """Where a download whose MD5 is wrong is moved, so it is never used under its final name."""
    return dest.with_name(dest.name + BAD_MD5_SUFFIX)


# --- Internals ---------------------------------------------------------------------------------


class _Retryable(Exception):
    """A failure worth another attempt (network trouble, truncated body, 5xx, 429)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _SameHostAuthRedirect(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but drop the Authorization header when the target is another origin.

    urllib's default handler copies every header to the new request, which would hand the
    credentials to whichever host (a CDN, or an attacker after an open redirect) the server
    points at, or send them in clear text after an https -> http redirect.
    """

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(new.full_url) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    return (
        parts.scheme.lower(),
        parts.hostname,
        parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower()),
    )


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_SameHostAuthRedirect)


def _prepare(url: str, credentials: Credentials) -> tuple[str, Credentials]:
    """(URL without userinfo, to request and to show in messages; credentials to send).

    Userinfo in the URL is used as basic credentials unless credentials were given explicitly;
    either way it is removed, because urllib cannot send it and it must not reach messages.
    """
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise DownloadError(
            f"{redact_url(url)!r} is not an http:// or https:// URL; check {ENV_HTTP_URL} (the folder holding the archives)"
        )
    clean = redact_url(urllib.parse.urlunsplit(parts))
    if "@" in parts.netloc and not credentials.given and parts.username:
        credentials = Credentials(
            username=urllib.parse.unquote(parts.username),
            password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
        )
    return clean, credentials


def _auth_refused(shown: str, code: int, credentials: Credentials) -> DownloadError:
    what = (
        "refused the credentials given" if credentials.given else "requires credentials and none were given"
    )
    return DownloadError(
        f"{shown}: the server {what} (HTTP {code}). Set {ENV_HTTP_USERNAME} and {ENV_HTTP_PASSWORD} "
        f"(basic auth) or {ENV_HTTP_TOKEN} (bearer token) to an account that may download the archives, then run again.",
        status=code,
    )


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if value is not None and value.strip().isdigit():
        return float(value.strip())
    return None  # the HTTP-date form is rare for downloads; plain back-off covers it


def _open(
    opener: urllib.request.OpenerDirector,
    request: urllib.request.Request,
    timeout: float,
    shown: str,
    credentials: Credentials,
    *,
    tolerate: tuple[int, ...] = (),
) -> HTTPResponse | HTTPError:
    """Send ``request``; map failures to DownloadError (final) or _Retryable.

    Statuses in ``tolerate`` come back as the (open) HTTPError for the caller to handle.
    """
    try:
        return opener.open(request, timeout=timeout)
    except HTTPError as exc:
        code = exc.code
        if code in tolerate:
            return exc
        with exc:  # releases the connection
            reason = exc.reason
            retry_after = _retry_after(exc.headers)
        if code in (401, 403):
            raise _auth_refused(shown, code, credentials) from None
        if code in (404, 410):
            raise DownloadError(
                f"{shown}: no file at this URL (HTTP {code}); check {ENV_HTTP_URL} (the folder holding the archives) "
                "and the file name",
                status=code,
            ) from None
        if code in (408, 429) or 500 <= code <= 599:
            raise _Retryable(f"HTTP {code} {reason}", retry_after) from None
        raise DownloadError(
            f"{shown}: the server answered HTTP {code} {reason}; check {ENV_HTTP_URL}", status=code
        ) from None
    except (URLError, OSError, HTTPException) as exc:
        # URLError wraps refused connections, DNS failures and timeouts; HTTPException covers a
        # server that closes the connection before answering (RemoteDisconnected).
        reason = exc.reason if isinstance(exc, URLError) else exc
        raise _Retryable(f"no answer from the server ({_describe(reason)})") from None


def _describe(reason: object) -> str:
    return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else str(reason)


def _content_length(response: HTTPResponse | HTTPError) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None]:
    """``bytes 10-99/100`` -> (10, 99, 100); ``bytes */100`` -> (None, None, 100); unknown parts None."""
    match = _CONTENT_RANGE_RE.fullmatch(value.strip()) if value else None
    if not match:
        return None, None, None
    start, end, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(end) if end is not None else None,
        int(total) if total not in (None, "*") else None,
    )


class _Partial:
    """The ``.partial`` file, its size and the running MD5 of its bytes."""

    def __init__(self, file: BinaryIO, path: Path, chunk_size: int) -> None:
        self.file = file
        self.path = path
        self.md5 = hashlib.md5()
        self.size = 0
        # Hash what an earlier attempt left, streaming, so the final MD5 covers the whole file.
        file.seek(0)
        while block := file.read(chunk_size):
            self.md5.update(block)
            self.size += len(block)

    def reset(self) -> None:
        """Start over from byte zero."""
        self.file.seek(0)
        self.file.truncate(0)
        self.md5 = hashlib.md5()
        self.size = 0

    def append(self, block: bytes) -> None:
        try:
            self.file.write(block)  # opened in append mode: always lands at the end
        except OSError as exc:
            # Not a network problem, so not retried: a full disk stays full.
            raise DownloadError(
                f"{self.path}: could not write the download ({exc.strerror or exc}); free some space "
                "or fix the folder's permissions and run again to resume"
            ) from exc
        self.md5.update(block)
        self.size += len(block)


class _Progress:
    """Calls ``progress`` at most every PROGRESS_INTERVAL seconds, and always at the end."""

    def __init__(self, callback: Callable[[int, int | None], None] | None) -> None:
        self.callback = callback
        self.last = 0.0

    def update(self, done: int, total: int | None, final: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if final or now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            self.callback(done, total)


def _lock(file: BinaryIO, path: Path) -> None:
    """Refuse to run two downloads into one ``.partial`` (they would interleave bytes)."""
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DownloadError(
            f"{path}: another process is downloading this file right now; wait for it to finish"
        ) from None


def _attempt(
    opener: urllib.request.OpenerDirector,
    url: str,
    shown: str,
    credentials: Credentials,
    partial: _Partial,
    expected_md5: str | None,
    timeout: float,
    chunk_size: int,
    progress: _Progress,
) -> int | None:
    """One GET, resuming from ``partial.size``; returns the total size the server stated (or None).

    Raises _Retryable when another attempt may succeed, DownloadError when it cannot.
    """
    headers = {
        "User-Agent": USER_AGENT,
        # Compression would change the bytes on disk and break lengths and ranges.
        "Accept-Encoding": "identity",
        **credentials.headers(),
    }
    resuming_from = partial.size
    if resuming_from:
        headers["Range"] = f"bytes={resuming_from}-"
    request = urllib.request.Request(url, headers=headers, method="GET")
    response = _open(opener, request, timeout, shown, credentials, tolerate=(416,) if resuming_from else ())

    with response:
        status = response.status if isinstance(response, HTTPResponse) else response.code
        if status == 416:
            # Nothing left past our offset: either the partial is already complete or it does
            # not belong to this file (longer than it, or the source changed).
            _, _, total = _parse_content_range(response.headers.get("Content-Range"))
            if total == partial.size:
                log.info("%s: the partial download already holds all %d bytes", shown, total)
                return total
            if total is None and expected_md5 is not None and partial.md5.hexdigest() == expected_md5:
                return partial.size
            partial.reset()
            raise _Retryable(
                f"the server has no bytes past {resuming_from} (its size: {total if total is not None else 'unknown'}); "
                "discarded the partial download to start over"
            )

        content_type = response.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() == "text/html":
            # image-net.org answers with its login page when the session is missing; saving that
            # page as a .tar would only fail later with a puzzling MD5 mismatch.
            raise DownloadError(
                f"{shown}: the server sent a web page instead of the file (a login page?). Set {ENV_HTTP_USERNAME} and "
                f"{ENV_HTTP_PASSWORD} or {ENV_HTTP_TOKEN}, or check {ENV_HTTP_URL} points at the folder holding the archives."
            )

        body_length = _content_length(response)
        if status == 206:
            start, _, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != resuming_from:
                partial.reset()
                raise _Retryable(
                    f"asked to resume at byte {resuming_from} but the server sent the range starting at {start}; "
                    "starting over"
                )
            if total is None and body_length is not None:
                total = resuming_from + body_length
        elif status == 200:
            if resuming_from:
                # The server ignored Range and is sending the whole file: keep it, drop ours.
                log.info("%s: the server does not resume downloads; starting again from byte 0", shown)
                partial.reset()
            total = body_length
        else:
            raise DownloadError(
                f"{shown}: unexpected answer HTTP {status} {response.reason}; check {ENV_HTTP_URL}"
            )

        if total is not None and total > partial.size:
            # Say so now, with the amount, rather than after hours of transfer.
            try:
                fileio.require_free_space(
                    partial.path.parent,
                    total - partial.size,
                    0,
                    f"downloading {partial.path.name.removesuffix(PARTIAL_SUFFIX)}",
                )
            except fileio.DiskFullError as exc:
                raise DownloadError(str(exc)) from None

        while True:
            try:
                block = response.read(chunk_size)
            except (OSError, HTTPException) as exc:
                # Timeouts, resets and IncompleteRead (chunked bodies): keep what arrived, resume.
                raise _Retryable(
                    f"connection lost after {partial.size} of {total if total is not None else '?'} bytes "
                    f"({_describe(exc)})"
                ) from None
            if not block:
                break
            partial.append(block)
            progress.update(partial.size, total)

    # total is known whenever Content-Length is. Short means the connection closed early (which
    # http.client reports as a normal end of body) or the server sent only part of the range.
    if total is not None and partial.size < total:
        raise _Retryable(f"the connection closed after {partial.size} of {total} bytes")
    return total


def download(
    url: str,
    dest: Path,
    *,
    expected_md5: str | None = None,
    credentials: Credentials = Credentials(),
    timeout: float = 60.0,
    retries: int = 5,
    backoff: float = 1.0,
    progress: Callable[[int, int | None], None] | None = None,
    chunk_size: int = 1 << 20,
) -> str:
    """Download url to dest; return the hex MD5 of the complete file.

    - An existing ``dest`` is not downloaded again: its MD5 is returned, unless ``expected_md5`` is
      given and differs, in which case it is moved to ``<dest>.bad-md5`` and downloaded afresh.
    - Bytes go to ``<dest>.partial``; an interrupted download resumes from there with a ``Range``
      request, within this call's retries or in a later call.
    - ``retries`` is the number of attempts after the first; attempt ``k`` failing waits
      ``min(backoff * 2**k, MAX_BACKOFF)`` seconds (longer if the server says Retry-After).
      Connection errors, timeouts, truncated bodies, 5xx, 408 and 429 are retried; 401, 403 and
      404 are not.
    - A complete file whose MD5 differs from ``expected_md5`` goes to ``<dest>.bad-md5`` and
      DownloadError is raised; ``dest`` only ever holds a complete, checked file.
    - ``progress(done_bytes, total_bytes_or_None)`` is called at most every PROGRESS_INTERVAL
      seconds while bytes arrive, and once at the end.
    - User info in the URL (``https://user:pass@host/...``) is used as basic credentials when
      ``credentials`` is empty, and never shown.
    """
    dest = Path(dest)
    if retries < 0 or chunk_size <= 0:
        raise ValueError("download: retries must be >= 0 and chunk_size > 0")
    expected = expected_md5.strip().lower() if expected_md5 is not None else None
    if expected is not None and not _MD5_RE.fullmatch(expected):
        raise ValueError(f"download: expected_md5 {expected_md5!r} is not 32 hexadecimal digits")
    request_url, credentials = _prepare(url, credentials)
    shown = request_url
    report = _Progress(progress)

    if dest.exists():
        actual = md5_file(dest)
        if expected is None or actual == expected:
            log.info("%s: already downloaded (MD5 %s)", dest, actual)
            size = dest.stat().st_size
            report.update(size, size, final=True)
            return actual
        bad = bad_md5_path(dest)
        os.replace(dest, bad)
        log.warning(
            "%s: MD5 %s, expected %s; moved it to %s and downloading again", dest, actual, expected, bad
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    partial_file = partial_path(dest)
    opener = _opener()
    # "a+b": creates the file if missing, keeps earlier bytes, and every write appends.
    with open(partial_file, "a+b") as file:
        _lock(file, partial_file)
        partial = _Partial(file, partial_file, chunk_size)
        if partial.size:
            log.info("%s: resuming from byte %d of %s", shown, partial.size, partial_file)
        else:
            log.info("%s: downloading to %s", shown, partial_file)

        attempt = 0
        while True:
            try:
                total = _attempt(
                    opener, request_url, shown, credentials, partial, expected, timeout, chunk_size, report
                )
                break
            except _Retryable as exc:
                file.flush()  # so that bytes kept for a resume are on disk even if we are killed now
                if attempt >= retries:
                    raise DownloadError(
                        f"{shown}: download failed after {attempt + 1} attempt(s): {exc}. The {partial.size} bytes "
                        f"received so far are kept in {partial_file}; run again to resume (check the network "
                        f"and {ENV_HTTP_URL} if this keeps happening)."
                    ) from None
                delay = min(backoff * 2**attempt, MAX_BACKOFF)
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, MAX_BACKOFF))
                log.warning(
                    "%s: %s; attempt %d of %d, trying again in %.1f s",
                    shown,
                    exc,
                    attempt + 1,
                    retries + 1,
                    delay,
                )
                time.sleep(delay)
                attempt += 1

        file.flush()
        # Durable before the rename: after a crash, dest must never be a short file.
        os.fsync(file.fileno())
        actual = partial.md5.hexdigest()
        size = partial.size
        report.update(size, total, final=True)

        if total is not None and size != total:
            partial.reset()
            raise DownloadError(
                f"{shown}: received {size} bytes but the server said the file has {total}; "
                "the partial download was discarded, run again"
            )
        if expected is not None and actual != expected:
            bad = bad_md5_path(dest)
            os.replace(partial_file, bad)
            raise DownloadError(
                f"{dest.name}: MD5 {expected} expected, got {actual}; the download is corrupt and was moved to "
                f"{bad}. Delete it and run again; if it happens again, check that {ENV_HTTP_URL} points at the "
                "official archives."
            )
        # Renamed while still locked, so no other process can start appending in between.
        os.replace(partial_file, dest)

    log.info("%s: downloaded %d bytes to %s (MD5 %s)", shown, size, dest, actual)
    return actual


def remote_info(
    url: str,
    credentials: Credentials = Credentials(),
    timeout: float = 60.0,
    *,
    retries: int = 2,
    backoff: float = 1.0,
) -> dict[str, int | str | None]:
    """HEAD ``url``; return ``{"content_length", "etag", "last_modified"}`` (each None if not sent).

    Used to notice that a source changed. Errors are handled as in :func:`download`. Servers that
    refuse HEAD (405/501) are asked for the first byte with a ranged GET instead.
    """
    request_url, credentials = _prepare(url, credentials)
    shown = request_url
    opener = _opener()
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **credentials.headers()}
    attempt = 0
    while True:
        try:
            request = urllib.request.Request(request_url, headers=headers, method="HEAD")
            response = _open(opener, request, timeout, shown, credentials, tolerate=(405, 501))
            length: int | None
            if isinstance(response, HTTPError):
                response.close()
                request = urllib.request.Request(
                    request_url, headers={**headers, "Range": "bytes=0-0"}, method="GET"
                )
                response = _open(opener, request, timeout, shown, credentials)
                with response:  # closing without reading the body: we only need the headers
                    if response.status == 206:
                        length = _parse_content_range(response.headers.get("Content-Range"))[2]
                    else:
                        length = _content_length(response)
            else:
                with response:
                    length = _content_length(response)
            return {
                "content_length": length,
                "etag": response.headers.get("ETag"),
                "last_modified": response.headers.get("Last-Modified"),
            }
        except _Retryable as exc:
            if attempt >= retries:
                raise DownloadError(
                    f"{shown}: could not get the file's details after {attempt + 1} attempt(s): {exc}; "
                    f"check the network and {ENV_HTTP_URL}"
                ) from None
            delay = min(backoff * 2**attempt, MAX_BACKOFF)
            if exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, MAX_BACKOFF))
            log.warning("%s: %s; trying again in %.1f s", shown, exc, delay)
            time.sleep(delay)
            attempt += 1
