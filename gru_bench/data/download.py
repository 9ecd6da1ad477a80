"""`gru-bench data download`: fetch the registry's files, check their sha256, never leave half a file.

Each file is fetched from its registry URLs in order (original host first, then mirrors) or, with
`source`, only from there: a local folder searched recursively by file name, or a mirror base URL.
Bytes stream into a temporary file beside the target and are renamed into place only once their hash
is accepted, so an interrupted run leaves either the old file or nothing. A dropped connection is
retried, resuming with an HTTP Range request when the server supports it.

Hash rule: a file is accepted when its sha256 is one of `DataFile.sha256`. Bytes matching none of them
(or a file with no known hash) are rejected and deleted, and the next URL is tried; with
`allow_unknown_hash` the first complete copy is kept instead, with a warning giving its sha256.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import quote, urlsplit

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from gru_bench import __version__
from gru_bench.data.registry import DataFile, resolve_names
from gru_bench.errors import UserError
from gru_bench.fsutil import atomic_write, sha256_file
from gru_bench.paths import data_dir, raw_dir

RETRIES = 3  # extra attempts per URL after a transient failure (dropped connection, 5xx, read timeout)
BACKOFF_S = 1.0  # wait BACKOFF_S * 2**i before retry i
TIMEOUT_S = 20.0  # connect / read timeout; a connect timeout counts as "host unreachable"
CHUNK = 1 << 16
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
_AGENT = f"gru-bench/{__version__} (urllib)"
_NO_NETWORK_HINT = "pass --source DIR with a copy of the files (e.g. --source ../shared/datasets)"


class FetchError(Exception):
    """One source failed for one file; `offline` means its host could not be reached at all."""

    def __init__(self, origin: str, reason: str, offline: bool = False):
        super().__init__(f"{origin}: {reason}")
        self.origin, self.reason, self.offline = origin, reason, offline


@dataclass(frozen=True)
class Outcome:
    file: DataFile
    path: Path
    status: str  # present | downloaded | copied | missing
    origin: str = ""  # URL or path it came from, or why it is missing
    verified: bool = True


def download(
    name: str, source: str | None = None, allow_unknown_hash: bool = False, dest: Path | None = None
) -> list[Path]:
    """Fetch and verify every file of dataset `name` (or `all`); return the paths now present.

    Files land in `raw_dir(key)/<filename>`, or `dest/<filename>` when `dest` is given. A required file
    that cannot be had raises UserError; an optional one (pickles, MIDI zips) gives a warning.
    """
    root = Path(dest) if dest else data_dir() / "raw"
    err = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    # the summary table replaces the bars; off a terminal they would only leave a blank line
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        fetcher = _Fetcher(progress, _Source.parse(source), allow_unknown_hash)
        outcomes = [
            fetcher.get(f, (root if dest else raw_dir(d.key)) / f.filename)
            for d in resolve_names(name)
            for f in d.files
        ]
    Console().print(_summary(outcomes, root, source))
    return [o.path for o in outcomes if o.status != "missing"]


@dataclass(frozen=True)
class _Source:
    """Where files come from: the registry URLs (None), a mirror base URL, or a local folder index."""

    text: str | None = None
    root: Path | None = None  # set for a local folder
    folder_index: dict[str, list[Path]] | None = None

    @staticmethod
    def parse(source: str | None) -> _Source:
        if source is None or "://" in source:
            return _Source(source)
        root = Path(source).expanduser()
        if not root.is_dir():
            raise UserError(
                f"--source {source!r} is neither a folder nor a URL: pass the folder with the files"
            )
        index: dict[str, list[Path]] = {}
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            for fname in sorted(files):
                index.setdefault(fname, []).append(Path(folder) / fname)
        return _Source(source, root, index)

    def candidates(self, f: DataFile) -> list[str | Path]:
        if self.text is None:
            return list(f.urls)
        if self.folder_index is None:
            return [self.text.rstrip("/") + "/" + quote(f.filename)]
        return list(self.folder_index.get(f.filename, []))


class _Fetcher:
    def __init__(self, progress: Progress, source: _Source, allow_unknown_hash: bool):
        self.progress, self.source, self.allow_unknown_hash = progress, source, allow_unknown_hash
        self.down_hosts: set[str] = set()  # hosts that were unreachable: skip them for later files

    def warn(self, msg: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {escape(msg)}", soft_wrap=True)

    def get(self, f: DataFile, target: Path) -> Outcome:
        if target.exists():
            digest = sha256_file(target)
            if digest in f.sha256:
                return Outcome(f, target, "present")
            if self.allow_unknown_hash:
                self.warn(f"kept {target} unverified: sha256 {digest} is not a known hash")
                return Outcome(f, target, "present", verified=False)
            self.warn(f"{target} has sha256 {digest}, not a known hash; fetching it again")
        if not f.sha256 and not self.allow_unknown_hash:
            msg = f"no sha256 is known for {f.filename}: pass --allow-unknown-hash to accept it unverified"
            return self._give_up(f, target, msg, "unknown hash")
        failures: list[FetchError] = []
        candidates = self.source.candidates(f)
        if not candidates:
            failures.append(FetchError(str(self.source.text), "no file of that name in the folder or below"))
        for src in candidates:
            try:
                with atomic_write(target) as out:
                    is_url = isinstance(src, str)
                    digest = self._from_url(src, out, f.filename) if is_url else _copy_file(src, out)
                    verified = digest in f.sha256
                    if not verified and not self.allow_unknown_hash:  # atomic_write deletes the partial file
                        raise FetchError(str(src), _mismatch(f, digest))
            except FetchError as e:
                failures.append(e)
                continue
            if not verified:
                self.warn(f"kept {src} unverified: sha256 {digest} is not a known hash of {f.filename}")
            origin = str(src) if is_url else str(src.relative_to(self.source.root))
            return Outcome(f, target, "downloaded" if is_url else "copied", origin, verified)
        return self._fail(f, target, failures)

    def _fail(self, f: DataFile, target: Path, failures: list[FetchError]) -> Outcome:
        if all(e.offline for e in failures):
            hosts = ", ".join(dict.fromkeys(urlsplit(e.origin).netloc for e in failures))
            msg = f"no network access (cannot reach {hosts}) to get {f.filename}: {_NO_NETWORK_HINT}"
            short = "no network"
        else:
            msg = f"could not get {f.filename}: " + "; ".join(map(str, failures))
            short = failures[-1].reason
            if self.source.text is None:
                msg += f"; or {_NO_NETWORK_HINT}"
        return self._give_up(f, target, msg, short)

    def _give_up(self, f: DataFile, target: Path, msg: str, short: str) -> Outcome:
        if f.required:
            raise UserError(msg)
        self.warn(f"skipping optional file: {msg}")
        return Outcome(f, target, "missing", short)

    def _from_url(self, url: str, out: IO[bytes], label: str) -> str:
        host = urlsplit(url).netloc
        if host in self.down_hosts:
            raise FetchError(url, "host unreachable earlier in this run", offline=True)
        task = None

        def show(done: int, total: int | None) -> None:
            nonlocal task
            if task is None:
                task = self.progress.add_task(label, total=total)
            self.progress.update(task, completed=done, total=total)

        try:
            return _stream(url, out, show)
        except FetchError as e:
            if e.offline:
                self.down_hosts.add(host)
            if task is not None:
                self.progress.remove_task(task)
            raise


def _mismatch(f: DataFile, digest: str) -> str:
    return (
        f"sha256 mismatch for {f.filename}: got {digest}, expected {' or '.join(f.sha256)} "
        "(the file was not kept; --allow-unknown-hash keeps such a file)"
    )


def _copy_file(src: Path, out: IO[bytes]) -> str:
    h = hashlib.sha256()
    try:
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
    except OSError as e:
        raise FetchError(str(src), e.strerror or str(e)) from None
    return h.hexdigest()


def _stream(url: str, out: IO[bytes], show: Callable[[int, int | None], None]) -> str:
    """Write `url`'s body to `out` and return its sha256, retrying and resuming after a dropped connection."""
    h, done, why = hashlib.sha256(), 0, ""
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        request = urllib.request.Request(url, headers={"User-Agent": _AGENT})
        if done:
            request.add_header("Range", f"bytes={done}-")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
                if done and resp.status != 206:  # the server ignored the Range header: start over
                    out.seek(0)
                    out.truncate()
                    h, done = hashlib.sha256(), 0
                elif done and not resp.headers.get("Content-Range", "").startswith(f"bytes {done}-"):
                    raise FetchError(
                        url, f"asked to resume at byte {done}, got {resp.headers['Content-Range']!r}"
                    )
                if resp.headers.get_content_type() == "text/html":  # an error or "moved" page
                    raise FetchError(url, "the server sent an HTML page instead of the file")
                total = _total_size(resp, done)
                show(done, total)
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    show(done, total)
            if total is None or done >= total:
                return h.hexdigest()
            why = f"connection closed after {done} of {total} bytes"
        except urllib.error.HTTPError as e:
            if e.code not in _TRANSIENT_HTTP:
                raise FetchError(url, f"HTTP {e.code} {e.reason}") from None
            why = f"HTTP {e.code}"
        except urllib.error.URLError as e:
            raise FetchError(url, _describe(e.reason), offline=_unreachable(e.reason)) from None
        except (ConnectionError, TimeoutError, http.client.HTTPException) as e:
            why = f"{type(e).__name__} {e}".strip()
        except ValueError as e:  # malformed URL
            raise FetchError(url, str(e)) from None
    raise FetchError(url, f"gave up after {RETRIES + 1} attempts ({why})")


def _total_size(resp: http.client.HTTPResponse, done: int) -> int | None:
    if done:  # "Content-Range: bytes 100-999/1000"
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _unreachable(reason: object) -> bool:
    if isinstance(reason, (socket.gaierror, ConnectionRefusedError, TimeoutError)):
        return True
    return isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS


def _describe(reason: object) -> str:
    if isinstance(reason, socket.gaierror):
        return "cannot resolve host name"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "connection timed out"
    return str(getattr(reason, "strerror", None) or reason)


def _summary(outcomes: list[Outcome], root: Path, source: str | None) -> Table:
    title = f"dataset files in {root}" + (f", from {source}" if source else "")
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("file", "status", "size"):
        table.add_column(col, no_wrap=True, justify="right" if col == "size" else "left")
    table.add_column("source", overflow="fold")
    styles = {"present": "green", "downloaded": "green", "copied": "green", "missing": "yellow"}
    for o in outcomes:
        status = o.status + ("" if o.verified else " (unverified)")
        size = f"{o.path.stat().st_size / 1e6:.2f} MB" if o.status != "missing" else "-"
        name = escape(str(o.path.relative_to(root)))
        table.add_row(name, f"[{styles[o.status]}]{status}[/]", size, escape(o.origin))
    return table
