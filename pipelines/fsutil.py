"""Write-to-temporary-then-commit helpers, so a reader never sees half an output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator


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
    """
    import pyarrow.fs as pafs

    if uri.startswith("s3://") and s3_endpoint_url:
        from urllib.parse import urlparse

        u = urlparse(s3_endpoint_url)
        fs = pafs.S3FileSystem(endpoint_override=u.netloc, scheme=u.scheme or "https",
                               region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
        return fs, uri[len("s3://"):].rstrip("/")
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
