"""The partitioned Parquet lake: ``<lake>/<dataset>/date=YYYY-MM-DD/symbol=XYZ/part-0.parquet``.

The lake URI is a local path or ``s3://bucket/prefix`` (pyarrow's S3 filesystem;
MinIO through ``?endpoint_override=host:port&scheme=http`` or ``AWS_ENDPOINT_URL``).
Writes validate first, then go to a temporary name and are renamed into place, so a
reader never sees a partial partition.

Each published partition carries its :class:`~.validation.Reference` (close mid, typical sizes or amounts) in its
own Parquet footer, so the statistics commit with the data in the same rename. The instrument's next day is
checked against the most recent earlier one of them.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .schema import present_schema
from .validation import (REFERENCE_KEY, DataValidationError, Reference, reference_of, validate_history,
                         validate_table)

log = logging.getLogger(__name__)
PART_FILE = "part-0.parquet"


@dataclass(frozen=True)
class Partition:
    dataset: str
    date: str
    symbol: str

    @property
    def key(self) -> str:
        return f"{self.dataset}/date={self.date}/symbol={self.symbol}"


def _fs(lake_uri: str) -> tuple[pafs.FileSystem, str]:
    from factory_core.fsutil import filesystem

    return filesystem(lake_uri)


def partition_file(lake_uri: str, part: Partition) -> tuple[pafs.FileSystem, str]:
    fs, root = _fs(lake_uri)
    return fs, f"{root.rstrip('/')}/{part.key}/{PART_FILE}"


def exists(lake_uri: str, part: Partition) -> bool:
    fs, path = partition_file(lake_uri, part)
    return fs.get_file_info(path).type == pafs.FileType.File


def write_partition(lake_uri: str, part: Partition, df: pd.DataFrame, *, check_history: bool = True) -> str:
    """Validate ``df`` and write it atomically with its reference statistics. Returns the path.

    ``df`` must meet the dataset's contract and, unless ``check_history`` is false, keep the scale of the
    instrument's previous published day. ``check_history=False`` publishes a legitimate change of scale (a stock
    split of 10:1 or more, a redenomination): that day becomes the baseline the next one is checked against.
    """
    table = pa.Table.from_pandas(df, preserve_index=False)
    schema = present_schema(part.dataset, table.column_names)
    validate_table(table, part.dataset, part.key, part.date)
    reference = validate_history(table, part.dataset, part.key,
                                 previous_reference(lake_uri, part) if check_history else None)
    table = table.cast(schema).replace_schema_metadata({REFERENCE_KEY: reference.to_json()})
    fs, path = partition_file(lake_uri, part)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}.parquet"
    try:
        with fs.open_output_stream(tmp) as sink:
            pq.write_table(table, sink, compression="zstd")
        fs.move(tmp, path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise
    log.info("lake: wrote %s (%d rows)", part.key, table.num_rows)
    return path


def partition_sha256(lake_uri: str, part: Partition) -> str:
    """The sha256 of the partition's file as stored: what a night records of its inputs."""
    import hashlib

    fs, path = partition_file(lake_uri, part)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as src:
        while block := src.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def read_partition(lake_uri: str, part: Partition) -> pd.DataFrame:
    """Read and validate one partition; a missing or bad one raises naming the partition.

    A file without reference statistics was not published by :func:`write_partition` (a feed wrote it straight
    into the lake), so it is also checked against the instrument's previous day here.
    """
    fs, path = partition_file(lake_uri, part)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise DataValidationError(part.key, None, f"partition not found at {path}")
    try:
        with fs.open_input_file(path) as src:
            table = pq.read_table(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataValidationError(part.key, None, f"unreadable Parquet: {exc}") from exc
    validate_table(table, part.dataset, part.key, part.date)
    if REFERENCE_KEY not in (table.schema.metadata or {}):
        validate_history(table, part.dataset, part.key, previous_reference(lake_uri, part))
    return table.cast(present_schema(part.dataset, table.column_names)).to_pandas()


def previous_reference(lake_uri: str, part: Partition) -> Reference | None:
    """The reference statistics of the instrument's most recent partition before ``part.date``; ``None`` if none.

    A partition a feed wrote without them is validated, then has them computed from its columns.
    """
    fs, root = _fs(lake_uri)
    infos = fs.get_file_info(pafs.FileSelector(f"{root.rstrip('/')}/{part.dataset}", allow_not_found=True))
    dates = sorted((i.base_name.split("=", 1)[1] for i in infos
                    if i.type == pafs.FileType.Directory and i.base_name.startswith("date=")), reverse=True)
    for date in (d for d in dates if d < part.date):
        prev = Partition(part.dataset, date, part.symbol)
        if not exists(lake_uri, prev):
            continue
        fs, path = partition_file(lake_uri, prev)
        try:
            with fs.open_input_file(path) as src:
                f = pq.ParquetFile(src)
                stored = (f.schema_arrow.metadata or {}).get(REFERENCE_KEY)
                if stored is not None:
                    return Reference.from_json(prev.key, stored)
                table = f.read()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataValidationError(prev.key, None, f"unreadable Parquet (the previous day of {part.key}): "
                                                      f"{exc}") from exc
        validate_table(table, prev.dataset, prev.key, prev.date)
        return reference_of(table, prev.dataset, prev.key)
    return None


def list_symbols(lake_uri: str, dataset: str, date: str) -> list[str]:
    fs, root = _fs(lake_uri)
    base = f"{root.rstrip('/')}/{dataset}/date={date}"
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name.split("=", 1)[1] for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("symbol="))
