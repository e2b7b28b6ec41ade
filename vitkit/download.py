"""Fetching one URL into one local file: the single downloader behind pre-trained weights (checkpoint/hub.py) and the
datasets' official files (data/datasets.py, data/tinyimagenet.py).

    fetch(url, dest, md5="...")                  # -> dest, downloaded once
    fetch_first([mirror1, mirror2], dest, md5="...")

What a download guarantees, wherever it is used:
  * A file at `dest` is never downloaded again (callers check its content as they would a copy put there by hand).
  * Bytes go to "<dest>.part", renamed to `dest` only when complete and checked: the length the server announces,
    and the `size`, `md5` and `sha256` the caller expects where it knows them. A killed, truncated or wrong download
    leaves nothing a later run trusts (only the empty "<dest>.lock").
  * A lock file ("<dest>.lock", flock) lets one process download a file at a time; the others wait and then find
    the finished file. The OS releases the lock when a process dies.
  * A progress bar (tqdm, on stderr) shows when stderr is a terminal or VITKIT_PROGRESS=1; VITKIT_DOWNLOAD_TIMEOUT
    (seconds, default 60) bounds each wait for the server.
  * A failure is a `DownloadError`, one line naming the URL, the reason and `dest`, where a copy fetched by other
    means is picked up. Its `connection` field says which kind it is: True when the server could not be reached or
    the transfer broke off (refused, unknown host, timeout, HTTP error status, truncated), so another mirror may
    work (`fetch_first` tries the next one); False when a file arrived whole but is not the expected one (size,
    md5, sha256) or downloads are off, which no mirror fixes.
`allowed()` is the VITKIT_NO_DOWNLOAD switch; each caller decides where it applies.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import UserError


class DownloadError(UserError):
    """A download that produced no file. `connection`: True when the server could not be reached or the transfer
    broke off (another mirror may work); False when what arrived is not the expected file, or nothing was tried."""

    def __init__(self, url: str, dest: Path, reason: str, connection: bool):
        self.url, self.dest, self.reason, self.connection = url, Path(dest), reason, connection
        super().__init__(f"cannot download {url} ({reason}); nothing was kept. To use it offline, fetch the file by "
                         f"other means and put it at {dest}")

    def __reduce__(self):  # picklable (multiprocessing) despite the keyword-free constructor
        return type(self), (self.url, self.dest, self.reason, self.connection)


def allowed() -> bool:
    """False when VITKIT_NO_DOWNLOAD is set to 1, true or yes."""
    return os.environ.get("VITKIT_NO_DOWNLOAD", "") not in ("1", "true", "yes")


def timeout() -> float:
    """VITKIT_DOWNLOAD_TIMEOUT in seconds (default 60): the longest wait for the server, per connect and per read."""
    try:
        return float(os.environ.get("VITKIT_DOWNLOAD_TIMEOUT", "60"))
    except ValueError:
        raise UserError(f"VITKIT_DOWNLOAD_TIMEOUT must be a number of seconds, got "
                        f"{os.environ['VITKIT_DOWNLOAD_TIMEOUT']!r}") from None


def fetch(url: str, dest, *, md5: Optional[str] = None, sha256: Optional[str] = None, size: Optional[int] = None,
          progress: Optional[bool] = None) -> Path:
    """Download `url` to `dest` unless a file is there already, and return `dest`. md5, sha256, size: what the file
    must be, where known. progress: a tqdm bar on stderr; default when stderr is a terminal or VITKIT_PROGRESS=1.
    Raises DownloadError (see the module docstring), or UserError when `dest`'s folder cannot be written."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = open(dest.with_name(dest.name + ".lock"), "a")
    except OSError as e:
        raise UserError(f"cannot write the download folder {dest.parent} ({e.strerror or e}); make it writable or "
                        f"point the cache elsewhere with VITKIT_CACHE") from None
    with lock, _locked(lock):
        if dest.is_file():  # another process finished it while this one waited
            return dest
        part = dest.with_name(dest.name + ".part")
        try:
            _transfer(url, part, dest, md5, sha256, size, progress)
            os.replace(part, dest)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return dest


def fetch_first(urls: Sequence[str], dest, **checks) -> Path:
    """`fetch` from the first of `urls` (mirrors of one file) that can be reached. A file that arrives and fails
    its checks is an error at once; when no mirror can be reached, one DownloadError (connection=True) names the
    first URL and gives every mirror's reason."""
    if not urls:
        raise ValueError("fetch_first needs at least one URL")
    failed = []
    for url in urls:
        try:
            return fetch(url, dest, **checks)
        except DownloadError as e:
            if not e.connection:
                raise
            failed.append(e)
    if len(failed) == 1:
        raise failed[0]
    reason = "; ".join([failed[0].reason] + [f"mirror {e.url}: {e.reason}" for e in failed[1:]])
    raise DownloadError(urls[0], dest, reason, connection=True)


@contextlib.contextmanager
def _locked(fh):
    """One downloader per file across processes; the OS releases the lock when a process dies."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock; the rename still keeps the cache consistent
        yield
        return
    fcntl.flock(fh, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)


def _transfer(url: str, part: Path, dest: Path, md5: Optional[str], sha256: Optional[str], size: Optional[int],
              progress: Optional[bool]) -> None:
    import http.client
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    from .version import __version__

    def fail(reason: str, connection: bool) -> DownloadError:
        return DownloadError(url, dest, reason, connection)

    if progress is None:
        progress = sys.stderr.isatty() or os.environ.get("VITKIT_PROGRESS") == "1"
    request = urllib.request.Request(url, headers={"User-Agent": f"vitkit/{__version__}"})
    digests = {name: hashlib.new(name) for name, want in (("md5", md5), ("sha256", sha256)) if want}
    writing = False  # which side an OSError comes from: the network, or writing the .part file
    try:
        with urllib.request.urlopen(request, timeout=timeout()) as resp:
            announced = resp.headers.get("Content-Length")
            announced = int(announced) if announced and announced.isdigit() else None
            if size is not None and announced is not None and announced != size:
                raise fail(f"the server announces {announced:,} bytes, expected {size:,}", connection=False)
            got, writing = 0, True
            with open(part, "wb") as fh, tqdm(total=announced, unit="B", unit_scale=True, unit_divisor=1024,
                                               desc=dest.name, file=sys.stderr, disable=not progress) as bar:
                while True:  # what has arrived: the .part file and the bar follow the network
                    writing = False
                    chunk = resp.read1(1 << 20)
                    writing = True
                    if not chunk:
                        break
                    fh.write(chunk)
                    for d in digests.values():
                        d.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
                fh.flush()
                os.fsync(fh.fileno())
    except urllib.error.HTTPError as e:
        raise fail(f"HTTP {e.code} {e.reason}", connection=True) from None
    except urllib.error.URLError as e:
        raise fail(str(getattr(e, "reason", e)), connection=True) from None
    except http.client.IncompleteRead:
        raise fail("truncated: the connection closed before the announced length", connection=True) from None
    except OSError as e:
        if writing:  # this machine's fault (disk full, read-only folder): no mirror helps
            raise fail(f"cannot write {part}: {e.strerror or e}", connection=False) from None
        raise fail(str(e) or type(e).__name__, connection=True) from None  # timeouts, resets
    except http.client.HTTPException as e:
        raise fail(str(e) or type(e).__name__, connection=True) from None
    for expected, what in ((announced, "the announced length"), (size, "the expected size")):
        if expected is not None and got < expected:
            raise fail(f"truncated: got {got:,} of {expected:,} bytes ({what})", connection=True)
        if expected is not None and got > expected:
            raise fail(f"got {got:,} bytes, more than {expected:,} ({what})", connection=False)
    for name, want in (("md5", md5), ("sha256", sha256)):
        if want and digests[name].hexdigest() != want.lower():
            raise fail(f"{name} {digests[name].hexdigest()} does not match the expected {want}", connection=False)
