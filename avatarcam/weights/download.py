"""Verified, resumable checkpoint downloads.

Bytes go to ``<file>.part`` (resumed with an HTTP ``Range`` request after a drop or a restart) and
are renamed to ``<file>`` only after the size and hash match the record, so the final name never
holds a partial or unverified file. Transient HTTP failures (connection errors, 429/5xx) are
retried by urllib3's ``Retry``; a failing mirror hands over to the next one.
"""
from __future__ import annotations

import itertools
import os
import re
import time
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

from avatarcam import __version__
from avatarcam.errors import WeightsError
from avatarcam.weights.checkpoint import looks_like_html
from avatarcam.weights.registry import WeightSpec
from avatarcam.weights.store import check, download_record, file_digests, remember_sha256, weights_dir, write_meta

_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _MirrorError(Exception):
    """This URL did not yield the file; the message says why (the next mirror is tried)."""


def make_session(*, retries: int = 3, backoff: float = 0.5) -> requests.Session:
    """A ``requests`` session retrying connection errors and 429/5xx with exponential backoff."""
    retry = Retry(
        total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff,
        status_forcelist=(429, 500, 502, 503, 504), allowed_methods=frozenset({"GET", "HEAD"}),
        raise_on_status=False, respect_retry_after_header=True,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = f"avatarcam/{__version__}"
    return session


def _html_message(url: str, filename: str) -> str:
    return (
        f"{url} sent a web page instead of {filename} (a login, quota, virus-scan or error page). "
        f"Open the URL in a browser, save the file, then run `avatarcam weights add PATH`."
    )


def _fetch(session: requests.Session, url: str, part: Path, spec: WeightSpec, *,
           timeout: tuple[float, float], max_resumes: int, progress: bool) -> None:
    """Fill ``part`` with the whole body of ``url``, resuming with ``Range`` after a dropped connection."""
    bar: tqdm | None = None
    try:
        for _attempt in range(max_resumes + 1):
            have = part.stat().st_size if part.exists() else 0
            if spec.size is not None and have > spec.size:
                part.unlink()  # longer than the file can be: not ours to resume
                have = 0
            if spec.size is not None and have == spec.size:
                return  # complete from an earlier run; verified by the caller
            headers = {"Range": f"bytes={have}-"} if have else {}
            with session.get(url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code == 416 and have:  # our partial does not fit this server's file
                    part.unlink()
                    continue
                if r.status_code >= 400:
                    raise _MirrorError(f"{url}: HTTP {r.status_code} {r.reason}")
                if "text/html" in r.headers.get("Content-Type", "").lower():
                    raise _MirrorError(_html_message(url, spec.filename))
                total = None
                if r.status_code == 206:
                    m = _CONTENT_RANGE.fullmatch(r.headers.get("Content-Range", "").strip())
                    if not m or int(m.group(1)) != have:
                        part.unlink()  # the server answered a different range than asked: start over
                        continue
                    total = int(m.group(3)) if m.group(3) != "*" else None
                else:
                    have = 0  # the server ignored Range: the body is the whole file
                    if (length := r.headers.get("Content-Length")) is not None:
                        total = int(length)
                before = have
                try:
                    chunks = r.iter_content(_CHUNK)
                    first = next(chunks, b"")
                    # Sniff before opening the part: "wb" would wipe a partial kept from another mirror.
                    if have == 0 and looks_like_html(first):
                        raise _MirrorError(_html_message(url, spec.filename))
                    if total is not None and spec.size is not None and total != spec.size:
                        raise _MirrorError(f"{url}: the server offers {total:,} bytes, expected {spec.size:,}")
                    if bar is None:
                        bar = tqdm(total=spec.size or total, unit="B", unit_scale=True, unit_divisor=1024,
                                   desc=spec.filename, disable=not progress)
                    bar.n = have
                    bar.refresh()
                    with open(part, "ab" if have else "wb") as f:
                        for chunk in itertools.chain([first], chunks):
                            f.write(chunk)
                            bar.update(len(chunk))
                        f.flush()
                        os.fsync(f.fileno())
                    return
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                    # A dropped body: urllib3's Retry covers requests, not a half-read stream, so resume
                    # from the bytes kept, but only while the attempts make progress.
                    if part.exists() and part.stat().st_size > before:
                        continue
                    raise _MirrorError(f"{url}: connection lost without progress ({type(exc).__name__})") from exc
        raise _MirrorError(f"{url}: still incomplete after {max_resumes} resumed attempts")
    finally:
        if bar is not None:
            bar.close()


def _verify_part(part: Path, spec: WeightSpec, url: str) -> str:
    """Check size and hashes of a finished ``.part``; delete it and raise on any mismatch. Returns the sha256."""
    size = part.stat().st_size
    if spec.size is not None and size != spec.size:
        part.unlink()
        raise _MirrorError(f"{url}: got {size:,} bytes, expected {spec.size:,}; deleted the partial download {part}")
    digests = file_digests(part, ("sha256", "md5") if spec.md5 else ("sha256",))
    for algo, want in (("sha256", spec.sha256), ("md5", spec.md5)):
        if want is not None and digests[algo] != want:
            part.unlink()
            raise _MirrorError(
                f"{url}: {algo} mismatch (got {digests[algo]}, expected {want}); deleted the partial download {part}"
            )
    return digests["sha256"]


def download(
    spec: WeightSpec,
    *,
    directory: str | Path | None = None,
    allow_unverified: bool = False,
    session: requests.Session | None = None,
    progress: bool = True,
    timeout: tuple[float, float] = (10.0, 60.0),
    max_resumes: int = 5,
) -> Path:
    """Download ``spec`` into the weights folder and return the verified file's path.

    Tries ``spec.urls`` in order. An already installed file that verifies is returned at once; a
    leftover ``.part`` is resumed. ``timeout`` is (connect, read) seconds. Without a published sha256
    the download is refused unless ``allow_unverified`` (then an ``md5`` is still checked
    if the record has one, and the sha256 seen is recorded so later checks detect changes).
    Raises :class:`WeightsError` naming each mirror's failure and the manual route.
    """
    if not spec.verifiable and not allow_unverified:
        raise WeightsError(
            f"cannot verify {spec.name}: no published sha256 for {spec.filename}"
            + (" (only an md5, which is checked)" if spec.md5 else "")
            + ". Re-run with --allow-unverified to accept what the mirror serves, or download it in a "
            "browser and run `avatarcam weights add PATH` (which checks it is a FOMM checkpoint)."
        )
    d = weights_dir(directory)
    d.mkdir(parents=True, exist_ok=True)
    final = d / spec.filename
    if final.is_file() and check(download_record(spec, final))[0]:
        return final
    part = final.with_name(final.name + ".part")
    failures: list[str] = []
    own_session = session is None
    session = session or make_session()
    try:
        for url in spec.urls:
            try:
                _fetch(session, url, part, spec, timeout=timeout, max_resumes=max_resumes, progress=progress)
                sha256 = _verify_part(part, spec, url)
            except _MirrorError as exc:
                failures.append(str(exc))
                continue
            except requests.RequestException as exc:  # retries exhausted, DNS, TLS, ...
                failures.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            os.replace(part, final)  # atomic: the final name only ever holds a verified file
            remember_sha256(final, sha256)
            write_meta(final, kind="download", name=spec.name, config=spec.config, sha256=sha256,
                       size=final.stat().st_size, url=url, published_hash=spec.sha256 is not None,
                       licence=spec.licence, downloaded=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            return final
    finally:
        if own_session:
            session.close()
    lines = [f"could not download {spec.name}:", *("  " + f for f in failures or ["no URLs in the record"])]
    if part.exists():
        lines.append(f"The partial download {part} is kept; running the same command again resumes it.")
    lines.append(f"Or download {spec.filename} in a browser (links in the README of {spec.source}) "
                 "and run `avatarcam weights add PATH`.")
    raise WeightsError("\n".join(lines))
