"""The partitioned Parquet lake: ``<lake>/<dataset>/date=YYYY-MM-DD/symbol=XYZ/part-0.parquet``.

The lake URI is a local path or ``s3://bucket/prefix`` (pyarrow's S3 filesystem;
MinIO through ``?endpoint_override=host:port&scheme=http`` or ``AWS_ENDPOINT_URL``).
Writes validate first, then go to a temporary name and are renamed into place, so a
reader never sees a partial partition.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .schema import SCHEMAS
from .validation import DataValidationError, validate_table

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


def write_partition(lake_uri: str, part: Partition, df: pd.DataFrame) -> str:
    """Validate ``df`` against the dataset schema and write it atomically. Returns the path."""
    schema = SCHEMAS[part.dataset]
    table = pa.Table.from_pandas(df, preserve_index=False)
    validate_table(table, part.dataset, part.key, part.date)
    table = table.cast(schema)
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


def read_partition(lake_uri: str, part: Partition) -> pd.DataFrame:
    """Read and validate one partition; a missing or bad one raises naming the partition."""
    fs, path = partition_file(lake_uri, part)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise DataValidationError(part.key, None, f"partition not found at {path}")
    try:
        with fs.open_input_file(path) as src:
            table = pq.read_table(src)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataValidationError(part.key, None, f"unreadable Parquet: {exc}") from exc
    validate_table(table, part.dataset, part.key, part.date)
    return table.cast(SCHEMAS[part.dataset]).to_pandas()


def list_symbols(lake_uri: str, dataset: str, date: str) -> list[str]:
    fs, root = _fs(lake_uri)
    base = f"{root.rstrip('/')}/{dataset}/date={date}"
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(i.base_name.split("=", 1)[1] for i in infos
                  if i.type == pafs.FileType.Directory and i.base_name.startswith("symbol="))
