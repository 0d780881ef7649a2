"""The engine store: immutable versions at ``<root>/<family>/<target>/<version>/``, on a path or S3.

A version is visible only once complete. Files go to a staging area first; the
version is committed by an atomic rename (path) or by server-side copies followed by
the ``_COMMITTED`` marker written last (S3). A reader that finds no marker sees no
version, so an upload that dies midway leaves nothing visible, and a retry of the
same version replaces the incomplete attempt. A committed version is never rewritten.

Every object carries its sha256 (in S3 object metadata ``sha256``; in the manifest
for both backends), and downloads are verified against the manifest. The manifest
itself is verified against the sha256 the registry recorded for it (``fetch(...,
manifest_sha256=)``, as a pull does) before anything it lists is downloaded. File names
in a manifest are checked before use, so a crafted manifest cannot write outside the
destination.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Protocol

from factory_core.contracts import Manifest, engine_identity, hash_mismatch, parse_manifest, read_manifest
from factory_core.errors import BadInput, FactoryError, ManifestError
from factory_core.fsutil import committed_dir, sha256_file
from factory_core.layout import STORE_COMMITTED

COMMITTED = STORE_COMMITTED
MANIFEST = "manifest.json"
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


STAGING_GRACE_S = 3600.0
"""Age after which a ``.staging/`` object in an S3 store is taken as abandoned by a killed publish."""


class StoreError(FactoryError, RuntimeError):
    """A store operation failed or found bad data; the message names the version and file."""


class ManifestMismatch(BadInput, StoreError):
    """The store's manifest is not the one the registry version was registered with (its sha256 differs from the
    version's ``manifest_sha256`` tag, or the version has no such tag). Final: the store is immutable, so a retry
    fetches the same bytes."""


def check_manifest_bytes(raw: bytes, want: str, where: str) -> None:
    """Raise :class:`ManifestMismatch` unless ``raw`` (the manifest as fetched) hashes to ``want``.

    Checked before anything the manifest lists is fetched: nothing in a manifest is trusted until its own bytes
    are the registered ones (an edited ``reproduce.sh`` or canary sample re-hashed into it, an extra listed file).
    """
    got = hashlib.sha256(raw).hexdigest()
    if got == want:
        return
    try:  # best effort: which engine the edited manifest names, to tell an engine swap from other edits
        names = f"; the store's manifest names engine {parse_manifest(raw, where).sha256['engine']}"
    except ManifestError:
        names = "; the store's manifest does not parse"
    raise ManifestMismatch(f"{where}: {MANIFEST} has sha256 {got}, but the registry recorded manifest_sha256 {want} "
                           f"for this version (edited after registration?){names}")


def check_name(name: str, what: str = "file name") -> str:
    """A single safe path component: no separators, no ``..``, nothing hidden."""
    if not _SAFE.match(name) or name in (".", "..") or name.startswith("."):
        raise StoreError(f"refusing unsafe {what} {name!r} (path traversal?)")
    return name


def version_files(manifest: Manifest) -> list[str]:
    """The files a version holds according to its manifest (checked names): the manifest, the engine, the ONNX,
    and whatever else it lists with a sha256 (``files``). A file the manifest does not hash is never stored or
    fetched."""
    names = {MANIFEST, manifest.engine_file, manifest.onnx_file, *manifest.files}
    return sorted(check_name(n) for n in names)


def marker_body(manifest: Manifest) -> bytes:
    """The ``_COMMITTED`` marker holds the engine identity; its own sha256 is its metadata."""
    return engine_identity(manifest).encode()


class EngineStore(Protocol):
    uri: str

    def put_version(self, src: Path, family: str, target: str, version: str) -> str: ...

    def exists(self, family: str, target: str, version: str) -> bool: ...

    def versions(self, family: str, target: str) -> list[str]: ...

    def put_files(self, src: Path, prefix: str) -> str: ...

    def fetch(self, family: str, target: str, version: str, dest: Path,
              manifest_sha256: str | None = None) -> Manifest:
        """Download a committed version into the (empty) directory ``dest``; return its manifest.

        ``manifest_sha256``: the registered hash of the manifest; when given, the manifest's bytes are checked
        against it (:class:`ManifestMismatch`) before anything else is downloaded.
        """


def verify_dir(folder: Path, manifest: Manifest, where: str) -> None:
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
        manifest = read_manifest(Path(src), str(src))
        if self.exists(family, target, version):  # immutable: the same engine may be put again, no other
            _same_engine(read_manifest(dest, f"{self.uri} {family}/{target}/{version}"), manifest,
                         f"{family}/{target}/{version}")
            return str(dest)
        verify_dir(Path(src), manifest, f"{src}")
        with committed_dir(dest) as tmp:
            for name in version_files(manifest):
                shutil.copyfile(Path(src) / name, tmp / name)
            (tmp / COMMITTED).write_bytes(marker_body(manifest))
        return str(dest)

    def put_files(self, src: Path, prefix: str) -> str:
        """Copy the files of ``src`` (reports: not engine versions) under ``<root>/<prefix>/``, atomically."""
        dest = self.root.joinpath(*(check_name(p, "path component") for p in prefix.split("/")))
        with committed_dir(dest) as tmp:
            for f in sorted(Path(src).iterdir()):
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
        return str(dest)

    def fetch(self, family: str, target: str, version: str, dest: Path,
              manifest_sha256: str | None = None) -> Manifest:
        src = self._dir(family, target, version)
        where = f"{self.uri} {family}/{target}/{version}"
        if not (src / COMMITTED).is_file():
            raise StoreError(f"{self.uri}: no committed version {family}/{target}/{version}")
        if (src / MANIFEST).is_symlink():
            raise ManifestError(f"{where}: {MANIFEST} is a symlink (refused)")
        if not (src / MANIFEST).is_file():
            raise ManifestError(f"{where}: no {MANIFEST}")
        raw = (src / MANIFEST).read_bytes()  # the bytes checked are the bytes installed
        if manifest_sha256 is not None:
            check_manifest_bytes(raw, manifest_sha256, where)
        manifest = parse_manifest(raw, where)
        (Path(dest) / MANIFEST).write_bytes(raw)
        for name in version_files(manifest):
            if name == MANIFEST:
                continue
            if (src / name).is_symlink():
                raise StoreError(f"{where}: {name} is a symlink (refused)")
            if (src / name).is_file():
                shutil.copyfile(src / name, Path(dest) / name)
        verify_dir(Path(dest), manifest, where)
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
        # bounded: each call at most max_attempts x (10 s connect + 30 s read), not boto's open-ended defaults
        self.s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                               config=Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                                             connect_timeout=10, read_timeout=30))
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
        src = Path(src)
        manifest = read_manifest(src, str(src))
        if self.exists(family, target, version):  # immutable: the same engine may be put again, no other
            _same_engine(self._manifest(family, target, version), manifest, f"{family}/{target}/{version}")
            return f"s3://{self.bucket}/{self._vkey(family, target, version)}"
        verify_dir(src, manifest, str(src))
        self.sweep_staging()
        staging = self._key(".staging", f"{family}.{target}.{version}.{uuid.uuid4().hex[:8]}")
        names = version_files(manifest)
        for name in names:  # 1. upload everything under a staging prefix (multipart when large)
            self.s3.upload_file(str(src / name), self.bucket, f"{staging}/{name}", Config=self.transfer,
                                ExtraArgs={"Metadata": {"sha256": sha256_file(src / name)}})
        for name in names:  # 2. server-side copy into the version's prefix (one request below S3's 5 GiB limit)
            source, key = {"Bucket": self.bucket, "Key": f"{staging}/{name}"}, self._vkey(family, target, version, name)
            if (src / name).stat().st_size < 5 << 30:
                self.s3.copy_object(CopySource=source, Bucket=self.bucket, Key=key, MetadataDirective="COPY")
            else:
                self.s3.copy(source, self.bucket, key, Config=self.transfer)
        # 3. the marker, last: from here on readers see the version. Its metadata is its own hash.
        body = marker_body(manifest)
        self.s3.put_object(Bucket=self.bucket, Key=self._vkey(family, target, version, COMMITTED), Body=body,
                           Metadata={"sha256": hashlib.sha256(body).hexdigest()})
        self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": f"{staging}/{n}"} for n in names]})
        return f"s3://{self.bucket}/{self._vkey(family, target, version)}"

    def sweep_staging(self, grace_s: float | None = None) -> int:
        """Delete what killed publishes left under ``.staging/``: objects and unfinished multipart uploads older
        than ``grace_s`` (default :data:`STAGING_GRACE_S`, well above one version's upload, so a publish running
        now in another night keeps its own). Every publish sweeps before it stages. Returns how many went."""
        import datetime as dt
        import logging

        grace = STAGING_GRACE_S if grace_s is None else grace_s
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=grace)
        prefix = self._key(".staging") + "/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        old = [o["Key"] for page in pages for o in page.get("Contents", []) if o["LastModified"] < cutoff]
        for i in range(0, len(old), 1000):  # DeleteObjects takes at most 1,000 keys
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in old[i:i + 1000]]})
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix).get("Uploads", [])
        stale = [u for u in uploads if u["Initiated"] < cutoff]
        for u in stale:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
        if old or stale:
            logging.getLogger(__name__).warning("%s: removed %d staging object(s) and %d unfinished upload(s) left "
                                                "by an interrupted publish", self.uri, len(old), len(stale))
        return len(old) + len(stale)

    def _manifest(self, family: str, target: str, version: str) -> Manifest:
        return parse_manifest(self._manifest_bytes(family, target, version), f"{self.uri} {family}/{target}/{version}")

    def _manifest_bytes(self, family: str, target: str, version: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=self._vkey(family, target, version, MANIFEST))["Body"].read()

    def put_files(self, src: Path, prefix: str) -> str:
        """Upload the files of ``src`` (reports: not engine versions) under ``<prefix>/``, each with its sha256."""
        key = self._key(*(check_name(p, "path component") for p in prefix.split("/")))
        for f in sorted(Path(src).iterdir()):
            if f.is_file():
                self.s3.upload_file(str(f), self.bucket, f"{key}/{f.name}", Config=self.transfer,
                                    ExtraArgs={"Metadata": {"sha256": sha256_file(f)}})
        return f"s3://{self.bucket}/{key}"

    def fetch(self, family: str, target: str, version: str, dest: Path,
              manifest_sha256: str | None = None) -> Manifest:
        if not self.exists(family, target, version):
            raise StoreError(f"{self.uri}: no committed version {family}/{target}/{version}")
        dest = Path(dest)
        where = f"{self.uri} {family}/{target}/{version}"
        raw = self._manifest_bytes(family, target, version)
        if manifest_sha256 is not None:
            check_manifest_bytes(raw, manifest_sha256, where)
        manifest = parse_manifest(raw, where)
        (dest / MANIFEST).write_bytes(raw)
        for name in version_files(manifest):
            if name == MANIFEST:
                continue
            try:
                self.s3.download_file(self.bucket, self._vkey(family, target, version, name), str(dest / name),
                                      Config=self.transfer)
            except Exception as exc:
                raise StoreError(f"{where}: cannot download {name}: {exc}") from exc
        verify_dir(dest, manifest, where)
        return manifest


def _same_engine(stored: Manifest, new: Manifest, where: str) -> None:
    a, b = engine_identity(stored), engine_identity(new)
    if a != b:
        raise StoreError(f"{where}: the store already holds another engine under this version (identity {a[:12]}, "
                         f"engine {(stored.sha256['engine'] or '')[:12]}); refusing to keep engine {b[:12]} "
                         f"({(new.sha256['engine'] or '')[:12]}) under it")


def open_store(uri: str, endpoint_url: str | None = None) -> EngineStore:
    """A store for ``uri``: ``s3://bucket/prefix`` (boto3 also honours ``AWS_ENDPOINT_URL``) or a local path."""
    if uri.startswith("s3://"):
        return S3Store(uri, endpoint_url=endpoint_url)
    return LocalStore(Path(uri))
