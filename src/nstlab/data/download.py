"""HTTP downloads that survive flaky networks, Ctrl-C and two runs at once.

Uses the standard library's urllib (no extra dependency; one connection per file, which is
fine for tens of thousands of images over `workers` threads). Per file: bytes go to
`<name>.part`, which a retry or a later run resumes with an HTTP Range request (a server that
answers 200 instead of 206 restarts it); the sha256 is checked when known, so is an MD5 the
server sends (see below), a `verify` callback (the images: a full decode by the safe loader)
must accept the bytes, and only then is the file renamed to its final name. Bytes that fail
any check are fetched again; after the retries a file that never verified (or never matched
the server's MD5) counts as missing, like one the server answers 404 or 410 for.
`manifest.json` in the target dir records filename → {sha256, size, url} (plus `verified: true`
when a `verify` accepted it), so a re-run checks files on disk and skips them without touching
the network (a file with no known checksum and no manifest entry cannot be trusted, so it is
fetched again; one never verified is verified on disk first). A lock file in the target dir
serialises processes that download into the same dir: the second waits, then finds the files
present and skips them.

A server's own checksum: S3-backed hosts (COCO's) send each object's MD5 as its ETag
(single-part uploads: 32 hex digits in quotes). Such an ETag names the whole object, also on a
206 answer to a Range request, so the whole `.part` (earlier bytes and new ones) is hashed
against it. `Content-MD5` (base64, RFC 1864) names the body of the response that carries it:
the whole file on a 200, only the range on a 206. A mismatch is a corrupt body like one that
does not decode. Weak ETags (`W/`), multipart ones (`-N`) and any other form are not digests and
are ignored; a server that sends no checksum changes nothing.
"""

import base64
import binascii
import hashlib
import json
import os
import re
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from filelock import FileLock
from rich.filesize import decimal
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nstlab.errors import DownloadError, NstlabError

MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".download.lock"
_CHUNK_BYTES = 1 << 20
_MAX_BACKOFF_S = 60.0
# Client errors that a later attempt can cure (timeout, rate limit); every other 4xx is final.
_RETRYABLE_CLIENT_STATUS = {408, 425, 429}
# The server says the file is not there (a mirror that lost it): the caller may replace it.
_GONE_STATUS = {404, 410}
# S3's ETag of a single-part object: its MD5 in quotes (multipart ones end in "-<parts>").
_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch; `filename` is a relative path under the target dir ("Style/a.jpg" is fine)."""

    url: str
    filename: str
    sha256: str | None = None


@dataclass(frozen=True)
class DownloadSummary:
    """What `download_all` did. Failures do not raise: the caller decides (the CLI prints `describe()`)."""

    downloaded: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    failed: Mapping[str, str] = field(default_factory=dict)  # filename → one-line reason
    bytes_received: int = 0  # over the network, retried partial transfers included
    # filename → reason: the server lacks it (404/410) or its bytes never verified (see module docstring)
    missing: Mapping[str, str] = field(default_factory=dict)
    note: str = ""  # what a source that does not download did instead ("20 hard-linked from ...")

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing

    def describe(self) -> str:
        head = self.note or (
            f"{len(self.downloaded)} downloaded ({decimal(self.bytes_received)}), "
            f"{len(self.skipped)} already present, {len(self.failed)} failed"
        )
        if self.missing:
            head += f", {len(self.missing)} missing on the server"
        reasons = [*self.failed.values(), *self.missing.values()]
        return "\n".join([head, *(f"  {reason}" for reason in reasons)])


class _Retryable(Exception):
    """A failure another attempt may cure: 5xx, timeout, dropped connection, bad checksum."""


class _Permanent(Exception):
    """A failure retrying cannot cure, such as 403."""


class _Gone(_Permanent):
    """The server does not hold the file (404, 410)."""


class _Unverified(_Retryable):
    """The bytes arrived whole but `verify` refused them (a corrupted body)."""


class _ChecksumMismatch(_Unverified):
    """The bytes differ from the MD5 the server sent with them."""


class _MissingFile(DownloadError):
    """Reported in DownloadSummary.missing rather than .failed."""


class _Cancelled(Exception):
    """The run was interrupted; the `.part` file is left to resume."""


class _Meter:
    """Progress bar plus the byte count, shared by the worker threads."""

    def __init__(self, progress: Progress, n_files: int):
        self.progress = progress
        self.task = progress.add_task("download", total=n_files, received="")
        self.bytes_received = 0
        self._lock = threading.Lock()

    def add_bytes(self, n_bytes: int) -> None:
        with self._lock:
            self.bytes_received += n_bytes
            total = self.bytes_received
        self.progress.update(self.task, received=decimal(total))

    def file_done(self) -> None:
        self.progress.advance(self.task)


@dataclass(frozen=True)
class _Policy:
    retries: int
    backoff_s: float
    timeout_s: float
    verify: Callable[[Path], None] | None = None


def download_all(
    files: Iterable[RemoteFile],
    target_dir: Path | str,
    *,
    workers: int = 8,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
    progress: bool = True,
    verify: Callable[[Path], None] | None = None,
) -> DownloadSummary:
    """Fetch every file into `target_dir` (see the module docstring for the guarantees).

    `verify(path)` raises an NstlabError when the bytes at `path` are unusable; it runs on every
    fetched file before the rename, and on a file found on disk that no verify has accepted yet.

    A failed file is retried `retries` times, waiting backoff_s, 2·backoff_s, 4·backoff_s, …
    (capped at 60 s) before each retry; 404/410 make a file missing at once, other final client
    errors fail it at once. `timeout_s` bounds every socket wait, so a stalled server counts as a
    failed attempt. On Ctrl-C the workers stop at their next chunk, `.part` files stay resumable
    and the manifest keeps the finished files.
    """
    files = list(files)
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    for remote in files:
        _final_path(target_dir, remote.filename)
    policy = _Policy(retries, backoff_s, timeout_s, verify)
    downloaded, skipped, failed, missing = [], [], {}, {}
    cancel = threading.Event()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[received]}"),
        TimeRemainingColumn(),
    )
    with FileLock(str(target_dir / LOCK_NAME)), Progress(*columns, disable=not progress) as bar:
        manifest = read_manifest(target_dir)
        meter = _Meter(bar, len(files))
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download")
        try:
            futures = {
                pool.submit(
                    _fetch_or_skip, remote, target_dir, manifest.get(remote.filename), policy, cancel, meter
                ): remote
                for remote in files
            }
            for future in as_completed(futures):
                remote = futures[future]
                meter.file_done()
                try:
                    record, fetched = future.result()
                except _MissingFile as error:
                    missing[remote.filename] = str(error)
                    manifest.pop(remote.filename, None)
                    continue
                except DownloadError as error:
                    failed[remote.filename] = str(error)
                    continue
                manifest[remote.filename] = record
                (downloaded if fetched else skipped).append(remote.filename)
        except BaseException:
            cancel.set()  # Ctrl-C: workers stop at their next chunk
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            write_manifest(target_dir, manifest)
    return DownloadSummary(
        tuple(sorted(downloaded)),
        tuple(sorted(skipped)),
        dict(sorted(failed.items())),
        meter.bytes_received,
        dict(sorted(missing.items())),
    )


def _fetch_or_skip(
    remote: RemoteFile,
    target_dir: Path,
    recorded: dict | None,
    policy: _Policy,
    cancel: threading.Event,
    meter: _Meter,
) -> tuple[dict, bool]:
    """(manifest record, whether the network was used)."""
    final = _final_path(target_dir, remote.filename)
    expected_sha256 = (remote.sha256 or (recorded or {}).get("sha256") or "").lower()
    if final.is_file() and expected_sha256:
        if recorded is None or recorded.get("size") == final.stat().st_size:
            digest, size = _sha256(final)
            if digest == expected_sha256:
                record = {"sha256": digest, "size": size, "url": remote.url}
                if policy.verify is None:
                    return record, False
                if (recorded or {}).get("verified") and recorded.get("sha256") == digest:
                    return {**record, "verified": True}, False
                try:
                    policy.verify(final)
                    return {**record, "verified": True}, False
                except NstlabError:
                    final.unlink()  # unusable bytes never keep a final name: fetch it again
    return _fetch_with_retries(remote, final, policy, cancel, meter), True


def _fetch_with_retries(
    remote: RemoteFile, final: Path, policy: _Policy, cancel: threading.Event, meter: _Meter
) -> dict:
    part = final.with_name(final.name + ".part")
    final.parent.mkdir(parents=True, exist_ok=True)
    reason, unverified = "", False
    for attempt in range(policy.retries + 1):
        if attempt and cancel.wait(min(policy.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)):
            raise _Cancelled
        try:
            object_md5 = _transfer(remote.url, part, policy.timeout_s, cancel, meter)
            digests, size = _digests(part, ("sha256", "md5") if object_md5 else ("sha256",))
            digest = digests["sha256"]
            if remote.sha256 and digest != remote.sha256.lower():
                part.unlink()
                raise _Retryable(f"sha256 mismatch (expected {remote.sha256[:12]}…, got {digest[:12]}…)")
            if object_md5:
                _check_md5(part, digests["md5"], object_md5, "the server's ETag")
            record = {"sha256": digest, "size": size, "url": remote.url}
            if policy.verify is not None:
                _verify_part(part, policy.verify)
                record["verified"] = True
            os.replace(part, final)
            return record
        except _Gone as error:
            raise _MissingFile(f"{final}: {error} from {remote.url} (the server does not hold it)") from None
        except _Permanent as error:
            raise DownloadError(f"{final}: {error} from {remote.url}; check the URL or the mirror") from None
        except _Retryable as error:
            reason, unverified = str(error), isinstance(error, _Unverified)
    if unverified:  # it arrived whole every time and never verified: the server's copy is bad
        raise _MissingFile(f"{final}: {reason} from {remote.url} after {policy.retries + 1} attempts")
    raise DownloadError(
        f"{final}: {reason} from {remote.url} after {policy.retries + 1} attempts; "
        "check the network or the mirror and run again (partial files resume)"
    )


def _verify_part(part: Path, verify: Callable[[Path], None]) -> None:
    """Run `verify` on a complete `.part`; refused bytes are deleted so the next attempt starts afresh."""
    try:
        verify(part)
    except NstlabError as error:
        part.unlink(missing_ok=True)
        detail = str(error).removeprefix(f"{part}: ").split("; ")[0]
        raise _Unverified(f"unusable bytes ({detail})") from None


def _check_md5(part: Path, got: str, expected: str, source: str) -> None:
    """Delete `part` and raise when its MD5 is not the one `source` vouched for."""
    if got != expected:
        part.unlink(missing_ok=True)
        raise _ChecksumMismatch(f"MD5 mismatch with {source} (expected {expected[:12]}…, got {got[:12]}…)")


def _etag_md5(etag: str | None) -> str | None:
    """The whole object's MD5 when `etag` has S3's single-part form; None for any other ETag."""
    match = _MD5_ETAG.fullmatch((etag or "").strip())
    return match.group(1).lower() if match else None


def _content_md5(header: str | None) -> str | None:
    """The body's MD5 (hex) from a Content-MD5 header; None when absent or not base64 of 16 bytes."""
    try:
        digest = base64.b64decode((header or "").strip(), validate=True)
    except binascii.Error:
        return None
    return digest.hex() if len(digest) == 16 else None


def _transfer(url: str, part: Path, timeout_s: float, cancel: threading.Event, meter: _Meter) -> str | None:
    """Append the rest of `url` to `part` (or restart it when the server ignores the Range).

    Checks the body against its Content-MD5 when sent; returns the whole object's MD5 from an
    S3-style ETag (None when there is none) for the caller to check on the complete file.
    """
    if cancel.is_set():
        raise _Cancelled
    offset = part.stat().st_size if part.exists() else 0
    request = Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urlopen(request, timeout=timeout_s) as response:
            resuming = offset > 0 and response.status == 206
            if resuming and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
                part.unlink()
                raise _Retryable(f"server sent the wrong range ({response.headers.get('Content-Range')})")
            expected_bytes = int(response.headers.get("Content-Length", -1))
            body_md5 = _content_md5(response.headers.get("Content-MD5"))
            body_hash = hashlib.md5(usedforsecurity=False)
            received_bytes = 0
            with open(part, "ab" if resuming else "wb") as handle:
                while chunk := response.read1(_CHUNK_BYTES):  # what has arrived, so Ctrl-C keeps it
                    if cancel.is_set():
                        raise _Cancelled
                    handle.write(chunk)
                    handle.flush()  # on disk now: a killed process (even SIGKILL) keeps what it received
                    body_hash.update(chunk)
                    received_bytes += len(chunk)
                    meter.add_bytes(len(chunk))
            # http.client returns a short body without raising when the server hangs up early.
            if 0 <= received_bytes < expected_bytes:
                raise _Retryable(f"connection dropped after {received_bytes} of {expected_bytes} bytes")
            if body_md5:
                _check_md5(part, body_hash.hexdigest(), body_md5, "the server's Content-MD5")
            return _etag_md5(response.headers.get("ETag"))
    except HTTPError as error:
        if error.code == 416:  # the .part is not a prefix of what the server has now
            part.unlink(missing_ok=True)
            raise _Retryable("server refused to resume (HTTP 416)") from None
        if error.code >= 500 or error.code in _RETRYABLE_CLIENT_STATUS:
            raise _Retryable(f"HTTP {error.code} {error.reason}") from None
        if error.code in _GONE_STATUS:
            raise _Gone(f"HTTP {error.code} {error.reason}") from None
        raise _Permanent(f"HTTP {error.code} {error.reason}") from None
    except (URLError, HTTPException, OSError) as error:  # refused, reset, timed out, short chunked read
        detail = str(getattr(error, "reason", error)) or type(error).__name__
        raise _Retryable(f"network error ({detail})") from None


def _sha256(path: Path) -> tuple[str, int]:
    digests, size = _digests(path, ("sha256",))
    return digests["sha256"], size


def _digests(path: Path, algorithms: tuple[str, ...]) -> tuple[dict[str, str], int]:
    """{algorithm: hex digest} and the size of the file, read once."""
    hashes = {name: hashlib.new(name, usedforsecurity=False) for name in algorithms}
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK_BYTES):
            for hash_ in hashes.values():
                hash_.update(block)
            size += len(block)
    return {name: hash_.hexdigest() for name, hash_ in hashes.items()}, size


def _safe_join(root: Path, name: str) -> Path | None:
    """root/name, or None when `name` is absolute or climbs out with `..`."""
    relative = PurePosixPath(name.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return None
    return root.joinpath(*relative.parts)


def _final_path(target_dir: Path, filename: str) -> Path:
    path = _safe_join(target_dir, filename)
    if path is None or path.name in (MANIFEST_NAME, LOCK_NAME) or path.name.endswith(".part"):
        raise DownloadError(
            f"{filename!r}: not a safe file name under {target_dir}; "
            "use a relative path without '..' that does not end in .part"
        )
    return path


def read_manifest(target_dir: Path) -> dict[str, dict]:
    """The manifest, or {} when missing or unreadable (files are then verified or refetched)."""
    try:
        manifest = json.loads((target_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def write_manifest(target_dir: Path, manifest: dict[str, dict]) -> None:
    path = target_dir / MANIFEST_NAME
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temp.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    os.replace(temp, path)


def extract_archive(archive: Path | str, target_dir: Path | str) -> None:
    """Unpack a zip or tar archive into `target_dir`.

    Every member is checked before anything is written: an absolute path, a `..` component or
    a link pointing outside `target_dir` raises DownloadError ("zip slip": a downloaded archive
    must not write over files elsewhere). Tar members go through Python's `tarfile.data_filter`
    (links, devices, permissions); zip cannot hold links that `zipfile` would create.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                if _safe_join(target_dir, name) is None:
                    raise _unsafe_member(archive, name, "absolute path or '..'")
            bundle.extractall(target_dir)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            members = bundle.getmembers()
            for member in members:
                try:
                    tarfile.data_filter(member, str(target_dir))
                except tarfile.FilterError as error:
                    raise _unsafe_member(archive, member.name, str(error)) from None
            bundle.extractall(target_dir, members=members, filter="data")
    else:
        raise DownloadError(f"{archive}: not a zip or tar archive; delete it and download it again")


def _unsafe_member(archive: Path, name: str, reason: str) -> DownloadError:
    return DownloadError(
        f"{archive}: member {name!r} would land outside the target dir ({reason}); "
        "refusing to extract an unsafe archive"
    )
