"""Downloads of the official dataset files with urllib: verified, atomic and resumable.

A file is written to ``<dest>.part`` and renamed to ``dest`` (``os.replace``, atomic) only once its
SHA-256 matches, so a half-written or tampered file is never used. An interrupted transfer keeps the
part file, and the next call asks for the rest with an HTTP Range request.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from lesion.data._sources import SOURCES
from lesion.errors import DataError

_CHUNK = 1 << 16
_TIMEOUT_S = 60
_USER_AGENT = "lesion (urllib)"


def download(name: str, root: str | Path, *, base_url: str | None = None, progress: bool = False) -> Path:
    """Fetch the official files of dataset ``name`` into ``root``, verified, and return ``root``.

    ``name`` is one of ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``; CIFAR archives are
    unpacked next to themselves. Files already present with the right digest are not fetched again.
    ``base_url`` replaces the official location (a mirror, or a local server in tests); the digests
    stay the official ones. Afterwards ``load_dataset(name, root=root)`` reads them.
    """
    if name not in SOURCES:
        raise DataError(f"cannot download dataset {name!r}; downloadable datasets: {', '.join(SOURCES)}")
    source = SOURCES[name]
    unverified = [f for f, digest in source.files if digest is None]
    if unverified:
        raise DataError(
            f"{name}: no verified SHA-256 for {', '.join(unverified)}; fetch it yourself with "
            "lesion.data.fetch(url, dest, sha256) giving a digest you trust"
        )
    root = Path(root).expanduser()
    base = base_url or source.base_url
    base = base if base.endswith("/") else base + "/"
    for file, digest in source.files:
        path = fetch(base + file, root / file, digest, progress=progress)
        if source.archive_dir is not None:
            _unpack(path, root, source.archive_dir)
    return root


def fetch(url: str, dest: str | Path, sha256: str | None, *, progress: bool = False) -> Path:
    """Download ``url`` to ``dest`` and check its SHA-256; return ``dest``.

    Nothing is fetched when ``dest`` already has the expected digest. A transfer that stops early
    keeps ``dest.part`` and raises; calling again resumes it (or starts over if the server ignores
    Range). A file whose digest differs is deleted and refused. ``sha256`` is required: an unverified
    file is never accepted.
    """
    expected = _check_sha256(sha256, url)
    if not url.lower().startswith(("http://", "https://")):
        raise DataError(f"url {url!r}; expected an http:// or https:// address")
    dest = Path(dest).expanduser()
    if dest.is_file() and _hash_file(dest).hexdigest() == expected:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    actual = _transfer(url, part, progress)
    if actual != expected:
        part.unlink(missing_ok=True)
        raise DataError(
            f"{url}: SHA-256 mismatch, expected {expected}, got {actual}; the download was deleted "
            "(a corrupted or tampered file, or the wrong URL); calling again downloads it afresh"
        )
    os.replace(part, dest)
    return dest


def _transfer(url: str, part: Path, progress: bool) -> str:
    """Bring ``part`` to the complete file at ``url``, resuming what it holds; its SHA-256 in hex."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # nothing left to send: the part file is already whole
            return _hash_file(part).hexdigest()
        raise DataError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(f"cannot download {url}: {reason}") from None
    with response:
        if offset and response.status == 206:
            start = _range_start(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink(missing_ok=True)
                raise DataError(
                    f"{url}: asked for bytes {offset}- and the server sent bytes {start}-; "
                    "the partial download was deleted, calling again starts over"
                )
            digest = _hash_file(part)
        else:  # 200: the whole file, from the start (the server ignored Range, or there was none)
            offset, digest = 0, hashlib.sha256()
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        received = _stream(response, part, "ab" if offset else "wb", digest, offset, total, progress)
    if total is not None and received < total:
        raise DataError(
            f"download of {url} stopped after {received:,} of {total:,} bytes; "
            f"{part} is kept and calling again resumes it"
        )
    return digest.hexdigest()


def _stream(response, part: Path, mode: str, digest, offset: int, total: int | None, progress: bool) -> int:
    """Append the response body to ``part`` and to ``digest``; the bytes ``part`` holds afterwards."""
    received = offset
    bar = tqdm(
        total=total,
        initial=offset,
        desc=part.name.removesuffix(".part"),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    with open(part, mode) as f, bar:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (http.client.IncompleteRead, OSError):  # a dropped connection or a timeout:
                break  # what arrived is kept; the caller compares ``received`` with the expected total
            if not chunk:
                break
            f.write(chunk)
            digest.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    return received


def _range_start(content_range: str) -> int | None:
    """The first byte of ``Content-Range: bytes <first>-<last>/<total>``; None when unparseable."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
    return int(match.group(1)) if match else None


def _hash_file(path: Path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest


def _check_sha256(sha256: str | None, url: str) -> str:
    if sha256 is None:
        raise DataError(
            f"no SHA-256 given for {url}; expected the file's digest (unverified files are refused)"
        )
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise DataError(f"sha256={sha256!r}; expected 64 hexadecimal digits")
    return sha256.lower()


def _unpack(archive: Path, root: Path, top: str) -> None:
    """Unpack the tar ``archive`` (all of it under ``top/``) to ``root/top``, atomically."""
    if (root / top).is_dir():
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{top}-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if not (m.isfile() or m.isdir()) or not parts or parts[0] != top or ".." in parts:
                    raise DataError(f"{archive}: member {m.name!r}; expected files and folders under {top}/")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **safe)
        os.replace(tmp / top, root / top)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive}: cannot unpack ({e}); expected a tar archive of {top}/") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
