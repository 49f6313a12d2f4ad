"""Fetch WikiText-2 once into a cache folder: verified by sha1, unpacked atomically.

A run that is interrupted, or a mirror that serves the wrong bytes, never leaves a half
file or half folder behind: everything is written under a temporary name inside the cache
folder and renamed into place only once it is complete and checked (files.py).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from bertpretrain import files
from bertpretrain.errors import UserError

log = logging.getLogger(__name__)

ARCHIVE = "wikitext-2-v1.zip"
FOLDER = "wikitext-2"  # the official zip unpacks to wikitext-2/wiki.{split}.tokens
TOKEN_FILES = ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")

# The author's mirror, wikitext.smerity.com, answers Python's default User-Agent
# ("Python-urllib/3.x") with 403 Forbidden, so we name ourselves instead.
USER_AGENT = "bertpretrain/0.1"
_CHUNK = 1 << 16


class _MirrorFailed(Exception):
    """One address could not give a good archive; the message says why, in a few words."""


def fetch_wikitext2(root: Path, urls: Sequence[str], sha1: str, *, timeout: float = 60.0) -> Path:
    """Return `root/wikitext-2` holding wiki.{train,valid,test}.tokens, downloading if needed.

    Mirrors in `urls` are tried in order; one that is down or serves bytes whose sha1 is
    not `sha1` is skipped. The verified archive is kept as `root/wikitext-2-v1.zip`, so a
    later run can unpack it again without the network.
    """
    root = Path(root)
    folder = root / FOLDER
    if _complete(folder):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    expected = sha1.strip().lower()
    if _unpack_kept_archive(root, expected):
        return folder
    failures = []
    for url in urls:
        try:
            _fetch_from(url, root, expected, timeout)
        except _MirrorFailed as err:
            log.warning("could not download %s: %s", url, err)
            failures.append(f"{url}: {err}")
            continue
        return folder
    raise UserError(_failure_message(failures))


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in TOKEN_FILES)


def _failure_message(failures: list[str]) -> str:
    tried = "; ".join(failures) if failures else "data.urls is empty"
    message = (
        f"could not download WikiText-2: {tried}; download {ARCHIVE} by hand, unzip it and "
        "set data.dir to the folder holding wiki.train.tokens"
    )
    # The CLI prints user errors as one line; server reasons may carry line breaks.
    return " ".join(message.split())


def _unpack_kept_archive(root: Path, sha1: str) -> bool:
    """Unpack the archive a previous run kept; drop it if it is not the one we expect."""
    archive = root / ARCHIVE
    if not archive.is_file():
        return False
    try:
        _check_sha1(_sha1_of_file(archive), sha1)
        _unpack(archive, root)
    except _MirrorFailed as err:
        log.warning("ignoring %s (%s); downloading it again", archive, err)
        archive.unlink(missing_ok=True)
        return False
    log.info("unpacked %s into %s", archive, root / FOLDER)
    return True


def _fetch_from(url: str, root: Path, sha1: str, timeout: float) -> None:
    """Download `url`, check it and unpack it; raise _MirrorFailed if this mirror is no good.
    Only bytes of the right sha1 are kept as the archive; one that cannot be unpacked is
    deleted again."""
    log.info("downloading %s", url)
    archive = root / ARCHIVE
    files.atomic_write(archive, lambda out: _check_sha1(_stream(url, out, timeout), sha1))
    try:
        _unpack(archive, root)
    except _MirrorFailed:
        archive.unlink(missing_ok=True)
        raise
    log.info("downloaded %s into %s", url, root / FOLDER)


def _stream(url: str, out: BinaryIO, timeout: float) -> str:
    """Copy the body of `url` into `out` in chunks and return its sha1 hex digest."""
    digest = hashlib.sha1()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            with tqdm(
                total=int(length) if length and length.isdigit() else None,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=ARCHIVE,
                disable=not sys.stderr.isatty(),  # no bar in CI or SLURM logs
            ) as bar:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise _MirrorFailed(_reason(err, timeout)) from err
    return digest.hexdigest()


def _reason(err: Exception, timeout: float) -> str:
    """A few words for the error message: `HTTP 403 Forbidden`, `connection refused`, ..."""
    if isinstance(err, urllib.error.HTTPError):
        err.close()  # it holds the open response
        return f"HTTP {err.code} {err.reason}"
    cause = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(cause, http.client.IncompleteRead):
        return "connection closed before the end of the archive"
    if isinstance(cause, ValueError):
        return f"not a valid URL ({cause})"
    return str(cause) or type(cause).__name__


def _check_sha1(digest: str, expected: str) -> None:
    if digest != expected:
        raise _MirrorFailed(f"sha1 mismatch (got {digest}, expected {expected})")


def _sha1_of_file(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _unpack(archive: Path, root: Path) -> None:
    """Extract the tokens files into a temporary folder, then rename it to root/wikitext-2;
    a complete folder there (another run finished first) is kept, an incomplete one (some
    files deleted by hand) replaced."""
    with files.temp_folder(root / FOLDER) as staging:
        _extract_tokens(archive, staging)
        files.place_folder(staging, root / FOLDER, keep=_complete)


def _extract_tokens(archive: Path, dest: Path) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as err:
        raise _MirrorFailed("not a zip archive") from err
    with zf:
        members = _token_members(zf)
        missing = [name for name in TOKEN_FILES if name not in members]
        if missing:
            raise _MirrorFailed(f"the archive holds no {', '.join(missing)}")
        for name, info in members.items():
            try:
                with zf.open(info) as src, (dest / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise _MirrorFailed(f"corrupt zip archive ({err})") from err


def _token_members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Map each tokens file name to its member, whatever folder the archive puts it in.

    Only the base name is used when writing, so a member named `../x` or `/etc/x` cannot
    land outside the staging folder.
    """
    members: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
        if name in TOKEN_FILES and not info.is_dir():
            members.setdefault(name, info)
    return members
