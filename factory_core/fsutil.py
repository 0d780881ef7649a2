"""Write-to-temporary-then-commit helpers, so a reader never sees half an output."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

from .errors import FactoryError


@contextlib.contextmanager
def committed_dir(dest: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``dest`` on success.

    On an exception the temporary directory is removed and ``dest`` is untouched,
    which makes a re-run of the same logical date idempotent.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if dest.exists():
            old = dest.parent / f".old-{dest.name}-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, obj: Any) -> Path:
    """Write JSON atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a lock or temporary folder it left is still in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def filesystem(uri: str, s3_endpoint_url: str | None = None) -> tuple[Any, str]:
    """A pyarrow filesystem and root path for a local path or ``s3://bucket/prefix``.

    ``s3_endpoint_url`` (MinIO, a test server) overrides the S3 endpoint; credentials come
    from the AWS chain. Otherwise pyarrow reads the URI (``?endpoint_override=…`` works too).
    An S3 filesystem is made once per process for each bucket, endpoint and AWS environment (:func:`_s3`).
    """
    import pyarrow.fs as pafs

    if uri.startswith("s3://"):
        from urllib.parse import urlsplit

        parts = urlsplit(uri)
        aws_env = tuple(os.environ.get(k) for k in _AWS_ENV)
        fs = _s3(parts.netloc, parts.query, s3_endpoint_url, aws_env)
        return fs, "/".join(p for p in (parts.netloc, parts.path.strip("/")) if p)
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


_AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
            "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION")
"""What an S3 filesystem is made from besides the URI: a change makes a new one."""


@functools.lru_cache(maxsize=32)
def _s3(bucket: str, query: str, endpoint_url: str | None, aws_env: tuple) -> Any:
    """One S3 filesystem per bucket, endpoint and AWS environment in a process. Making one costs a client and,
    without a region in the URI, a request for the bucket's region (~40 ms on loopback); a task used to pay that
    for every artifact it read or wrote."""
    import pyarrow.fs as pafs

    if endpoint_url:
        from urllib.parse import urlparse

        u = urlparse(endpoint_url)
        return pafs.S3FileSystem(endpoint_override=u.netloc, scheme=u.scheme or "https",
                                 region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    return pafs.FileSystem.from_uri(f"s3://{bucket}" + (f"?{query}" if query else ""))[0]


# --- Run artifacts on any filesystem -------------------------------------------------------------------------
# A stage works in a local scratch folder and commits it to the run root in one step. On a local root that step
# is a rename (committed_dir). On an object store, where nothing renames, the folder's files go up first and a
# commit record listing each file's sha256 goes last; readers require it and check every byte they fetch, so a
# reader sees all of a stage's outputs or none, even while a retry is rewriting them.

COMMITTED = "_COMMITTED.json"


class ArtifactError(FactoryError, RuntimeError):
    """An artifact is missing, not committed, or its bytes differ from its commit record; names the URI."""


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def join(uri: str, *parts: str) -> str:
    """``uri/part/…`` for a path or a URI alike."""
    return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])


@contextlib.contextmanager
def stage_output(uri: str, scratch: Path) -> Iterator[Path]:
    """Yield an empty local folder; on success its files become ``uri`` at once, on failure nothing changes."""
    if not is_remote(uri):
        with committed_dir(Path(uri)) as tmp:
            yield tmp
        return
    import pyarrow.fs as pafs

    Path(scratch).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="out-", dir=scratch))
    try:
        yield tmp
        files = {f.relative_to(tmp).as_posix(): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        fs, path = filesystem(uri)
        fs.delete_dir_contents(path, missing_dir_ok=True)  # the commit record goes first: readers now see none
        fs.create_dir(path)
        pafs.copy_files(str(tmp), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        with fs.open_output_stream(f"{path}/{COMMITTED}") as out:
            out.write(json.dumps({"files": files}, sort_keys=True).encode())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _commit_record(fs: Any, path: str, uri: str) -> tuple[str, dict[str, str]]:
    """The nearest committed stage folder at or above ``path``, and its file list."""
    import pyarrow.fs as pafs

    folder = path
    for _ in range(4):  # an artifact sits at most a few levels under its stage folder
        marker = f"{folder}/{COMMITTED}"
        if fs.get_file_info(marker).type == pafs.FileType.File:
            with fs.open_input_stream(marker) as f:
                return folder, json.loads(f.read())["files"]
        if "/" not in folder:
            break
        folder = folder.rsplit("/", 1)[0]
    raise ArtifactError(f"{uri}: not committed (no {COMMITTED} in its stage folder): the stage that writes it has "
                        f"not finished, or failed")


def fetch(uri: str, scratch: Path) -> Path:
    """A local path with the file or folder at ``uri``: the path itself when local, else a verified download."""
    if not is_remote(uri):
        p = Path(uri)
        if not p.exists():
            raise ArtifactError(f"{uri}: no such artifact")
        return p
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    is_dir = fs.get_file_info(path).type == pafs.FileType.Directory
    stage, files = _commit_record(fs, path, uri)
    rel = path[len(stage):].strip("/")
    if is_dir:  # every committed file under the folder, named relative to it
        wanted = {name: (name[len(rel):].lstrip("/") if rel else name, digest) for name, digest in files.items()
                  if not rel or name.startswith(rel + "/")}
    elif rel in files:
        wanted = {rel: (Path(rel).name, files[rel])}
    else:
        raise ArtifactError(f"{uri}: not in its stage's commit record")
    dest = Path(scratch) / "fetched" / hashlib.sha1(uri.encode()).hexdigest()[:16]
    for name, (local_name, digest) in wanted.items():
        local = dest / local_name
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.is_file() and sha256_file(local) == digest:
            continue  # fetched before in this scratch
        pafs.copy_files(f"{stage}/{name}", str(local), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        if sha256_file(local) != digest:
            local.unlink()
            raise ArtifactError(f"{join(stage, name)}: sha256 differs from its commit record")
    return dest if is_dir else dest / Path(rel).name


def put_json(uri: str, obj: Any) -> str:
    """Write one JSON document at ``uri`` in one step (rename locally; a single PUT on an object store)."""
    if not is_remote(uri):
        return str(write_json(Path(uri), obj))
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0])
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
    return uri


def get_json(uri: str) -> Any:
    """The JSON document at ``uri``; None when there is none."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def list_json(uri: str) -> list[Any]:
    """Every ``*.json`` document directly under folder ``uri``, by name."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    out = []
    for info in sorted(infos, key=lambda i: i.path):
        if info.type == pafs.FileType.File and info.path.endswith(".json"):
            with fs.open_input_stream(info.path) as f:
                out.append(json.loads(f.read()))
    return out


def delete(uri: str) -> None:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


RESERVE = ".disk-reserve"
RESERVE_BYTES = 1 << 20
"""Room kept in ``home`` (1 MiB; a failure record with its traceback is a few KiB) so that a night that fills its
disk can still say so: the reserve is released to write the failure record."""


def reserve_space(home: Path) -> bool:
    """Keep :data:`RESERVE_BYTES` in ``home/.disk-reserve`` (a file of zeros). False when there is no room for it."""
    path = Path(home) / RESERVE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size >= RESERVE_BYTES:
            return True
        with open(path, "wb") as f:
            f.write(b"\0" * RESERVE_BYTES)
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        return False


def release_space(home: Path) -> bool:
    """Free the reserve (when the disk is full and the failure record needs the room). True when there was one."""
    try:
        (Path(home) / RESERVE).unlink()
        return True
    except OSError:
        return False
