"""The engine store: immutable versions at ``<root>/<family>/<target>/<version>/``, on a path or S3.

A version is visible only once complete. Files go to a staging area first; the
version is committed by an atomic rename (path) or by server-side copies followed by
the ``_COMMITTED`` marker written last (S3). A reader that finds no marker sees no
version, so an upload that dies midway leaves nothing visible, and a retry of the
same version replaces the incomplete attempt. A committed version is never rewritten.

Every object carries its sha256 (in S3 object metadata ``sha256``; in the manifest
for both backends), and downloads are verified against the manifest. File names in a
manifest are checked before use, so a crafted manifest cannot write outside the
destination.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Protocol

from pipelines.engines.base import hash_mismatch
from pipelines.fsutil import committed_dir, sha256_file

COMMITTED = "_COMMITTED"
MANIFEST = "manifest.json"
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


class StoreError(RuntimeError):
    """A store operation failed or found bad data; the message names the version and file."""


def check_name(name: str, what: str = "file name") -> str:
    """A single safe path component: no separators, no ``..``, nothing hidden."""
    if not _SAFE.match(name) or name in (".", "..") or name.startswith("."):
        raise StoreError(f"refusing unsafe {what} {name!r} (path traversal?)")
    return name


def version_files(manifest: dict) -> list[str]:
    """The files a version holds according to its manifest (checked names)."""
    names = {MANIFEST, manifest["engine_file"], manifest["onnx_file"], "reproduce.sh"}
    return sorted(check_name(n) for n in names)


class EngineStore(Protocol):
    uri: str

    def put_version(self, src: Path, family: str, target: str, version: str) -> str: ...

    def exists(self, family: str, target: str, version: str) -> bool: ...

    def versions(self, family: str, target: str) -> list[str]: ...

    def put_files(self, src: Path, prefix: str) -> str: ...

    def fetch(self, family: str, target: str, version: str, dest: Path) -> dict:
        """Download a committed version into the (empty) directory ``dest``; return its manifest."""


def verify_dir(folder: Path, manifest: dict, where: str) -> None:
    """Check the engine and ONNX bytes in ``folder`` against ``manifest`` (StoreError naming the file)."""
    version_files(manifest)  # refuses unsafe names before any path is built from them
    problem = hash_mismatch(Path(folder), manifest)
    if problem:
        raise StoreError(f"{where}: {problem} (corrupted or truncated?)")


class LocalStore:
    """The store on a filesystem path (the embedded default: ``$FACTORY_HOME/engine_store``)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def _dir(self, family: str, target: str, version: str) -> Path:
        return self.root / check_name(family, "family") / check_name(target, "target") / check_name(version, "version")

    def exists(self, family: str, target: str, version: str) -> bool:
        return (self._dir(family, target, version) / COMMITTED).is_file()

    def versions(self, family: str, target: str) -> list[str]:
        base = self.root / family / target
        return sorted(d.name for d in base.iterdir() if (d / COMMITTED).is_file()) if base.is_dir() else []

    def put_version(self, src: Path, family: str, target: str, version: str) -> str:
        dest = self._dir(family, target, version)
        if self.exists(family, target, version):
            return str(dest)  # immutable: the same version is already there
        manifest = json.loads((Path(src) / MANIFEST).read_text())
        verify_dir(Path(src), manifest, f"{src}")
        with committed_dir(dest) as tmp:
            for name in version_files(manifest):
                if (Path(src) / name).is_file():
                    shutil.copy2(Path(src) / name, tmp / name)
            (tmp / COMMITTED).write_text(manifest["sha256"]["engine"])
        return str(dest)

    def put_files(self, src: Path, prefix: str) -> str:
        """Copy the files of ``src`` (reports: not engine versions) under ``<root>/<prefix>/``, atomically."""
        dest = self.root.joinpath(*(check_name(p, "path component") for p in prefix.split("/")))
        with committed_dir(dest) as tmp:
            for f in sorted(Path(src).iterdir()):
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        return str(dest)

    def fetch(self, family: str, target: str, version: str, dest: Path) -> dict:
        src = self._dir(family, target, version)
        if not (src / COMMITTED).is_file():
            raise StoreError(f"{self.uri}: no committed version {family}/{target}/{version}")
        manifest = json.loads((src / MANIFEST).read_text())
        for name in version_files(manifest):
            if (src / name).is_file():
                shutil.copyfile(src / name, Path(dest) / name)
        verify_dir(Path(dest), manifest, f"{family}/{target}/{version}")
        return manifest


class S3Store:
    """The store in S3 or MinIO (boto3). Credentials come from the environment or the default chain."""

    def __init__(self, uri: str, endpoint_url: str | None = None, region: str | None = None,
                 multipart_threshold_mib: int = 64, max_attempts: int = 5):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not uri.startswith("s3://"):
            raise StoreError(f"S3 store URI must start with s3://, got {uri!r}")
        bucket, _, prefix = uri[5:].partition("/")
        self.uri, self.bucket, self.prefix = uri, bucket, prefix.strip("/")
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                               config=Config(retries={"max_attempts": max_attempts, "mode": "standard"}))
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold_mib << 20,
                                       multipart_chunksize=max(multipart_threshold_mib, 5) << 20)

    def _key(self, *parts: str) -> str:
        return str(PurePosixPath(self.prefix, *parts)) if self.prefix else str(PurePosixPath(*parts))

    def _vkey(self, family: str, target: str, version: str, name: str = "") -> str:
        parts = [check_name(family, "family"), check_name(target, "target"), check_name(version, "version")]
        return self._key(*parts, name) if name else self._key(*parts) + "/"

    def exists(self, family: str, target: str, version: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3.head_object(Bucket=self.bucket, Key=self._vkey(family, target, version, COMMITTED))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def versions(self, family: str, target: str) -> list[str]:
        base = self._key(family, target) + "/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base)
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return sorted({k[len(base):].split("/")[0] for k in keys if k.endswith("/" + COMMITTED)})

    def put_version(self, src: Path, family: str, target: str, version: str) -> str:
        if self.exists(family, target, version):
            return f"s3://{self.bucket}/{self._vkey(family, target, version)}"
        src = Path(src)
        manifest = json.loads((src / MANIFEST).read_text())
        verify_dir(src, manifest, str(src))
        staging = self._key(".staging", f"{family}.{target}.{version}.{uuid.uuid4().hex[:8]}")
        names = [n for n in version_files(manifest) if (src / n).is_file()]
        for name in names:  # 1. upload everything under a staging prefix (multipart when large)
            self.s3.upload_file(str(src / name), self.bucket, f"{staging}/{name}", Config=self.transfer,
                                ExtraArgs={"Metadata": {"sha256": sha256_file(src / name)}})
        for name in names:  # 2. server-side copy into the version's prefix
            self.s3.copy({"Bucket": self.bucket, "Key": f"{staging}/{name}"}, self.bucket,
                         self._vkey(family, target, version, name), Config=self.transfer)
        # 3. the marker, last: from here on readers see the version
        self.s3.put_object(Bucket=self.bucket, Key=self._vkey(family, target, version, COMMITTED),
                           Body=manifest["sha256"]["engine"].encode(),
                           Metadata={"sha256": manifest["sha256"]["engine"]})
        self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": f"{staging}/{n}"} for n in names]})
        return f"s3://{self.bucket}/{self._vkey(family, target, version)}"

    def put_files(self, src: Path, prefix: str) -> str:
        """Upload the files of ``src`` (reports: not engine versions) under ``<prefix>/``, each with its sha256."""
        key = self._key(*(check_name(p, "path component") for p in prefix.split("/")))
        for f in sorted(Path(src).iterdir()):
            if f.is_file():
                self.s3.upload_file(str(f), self.bucket, f"{key}/{f.name}", Config=self.transfer,
                                    ExtraArgs={"Metadata": {"sha256": sha256_file(f)}})
        return f"s3://{self.bucket}/{key}"

    def fetch(self, family: str, target: str, version: str, dest: Path) -> dict:
        if not self.exists(family, target, version):
            raise StoreError(f"{self.uri}: no committed version {family}/{target}/{version}")
        dest = Path(dest)
        self.s3.download_file(self.bucket, self._vkey(family, target, version, MANIFEST), str(dest / MANIFEST))
        manifest = json.loads((dest / MANIFEST).read_text())
        for name in version_files(manifest):
            if name == MANIFEST:
                continue
            try:
                self.s3.download_file(self.bucket, self._vkey(family, target, version, name), str(dest / name),
                                      Config=self.transfer)
            except Exception as exc:
                if name == "reproduce.sh":
                    continue
                raise StoreError(f"{family}/{target}/{version}: cannot download {name}: {exc}") from exc
        verify_dir(dest, manifest, f"{self.uri} {family}/{target}/{version}")
        return manifest


def open_store(uri: str, endpoint_url: str | None = None) -> EngineStore:
    """A store for ``uri``: ``s3://bucket/prefix`` (boto3 also honours ``AWS_ENDPOINT_URL``) or a local path."""
    if uri.startswith("s3://"):
        return S3Store(uri, endpoint_url=endpoint_url)
    return LocalStore(Path(uri))
