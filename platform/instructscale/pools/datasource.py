"""A Ray Data datasource that streams instruction files and validates every record.

Each output block holds canonical columns plus ``_file``, ``_line``, ``_reason`` and ``_raw``;
``_reason`` is null for a valid row and says what is wrong (naming the field) otherwise, so the
ingest sink can split good rows from quarantined ones in one streaming pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from instructscale.pools.records import RecordLimits, RowError, normalize_record
from instructscale.schema import POOL_SCHEMA

READ_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in POOL_SCHEMA]
    + [
        pa.field("_file", pa.string()),
        pa.field("_line", pa.int64()),
        pa.field("_reason", pa.string()),
        pa.field("_raw", pa.string()),
    ]
)
RAW_KEEP_CHARS = 2000  # quarantined rows keep this much of the raw record

# container -> (file extensions, row style)
FORMATS = {
    "jsonl": (["jsonl", "json", "jsonl.gz", "json.gz"], "auto"),
    "parquet": (["parquet"], "auto"),
    "alpaca": (["json", "jsonl"], "instruction"),
    "sharegpt": (["json", "jsonl"], "chat"),
}


class PoolDatasource(FileBasedDatasource):
    """Reads JSONL, JSON arrays (Alpaca/ShareGPT) and Parquet into validated canonical blocks."""

    def __init__(
        self,
        paths: str | list[str],
        *,
        fmt: str,
        source: str | None = None,
        limits: RecordLimits = RecordLimits(),
        block_rows: int = 8192,
        uri_prefix: str = "",
        **kwargs,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"unknown pool format {fmt!r}; expected one of {sorted(FORMATS)}")
        super().__init__(paths, file_extensions=FORMATS[fmt][0], **kwargs)
        self._fmt, self._style = fmt, FORMATS[fmt][1]
        self._source, self._limits, self._block_rows = source, limits, block_rows
        self._uri_prefix = uri_prefix  # "s3://" etc.: quarantine records name files as the user did

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        if self._fmt == "parquet":  # Parquet needs random access for its footer
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        source = self._source or path.rsplit("/", 1)[-1]
        path = self._uri_prefix + path
        rows: list[dict] = []
        for line, rec, raw, error in self._records(f, path):
            if error is None:
                try:
                    row = normalize_record(
                        rec, style=self._style, file=path, line=line, source=source, limits=self._limits
                    )
                    rows.append({**row, "_file": path, "_line": line, "_reason": None, "_raw": None})
                except RowError as err:
                    error = str(err)
            if error is not None:
                if raw is None:
                    raw = json.dumps(rec, default=str)
                rows.append({"_file": path, "_line": line, "_reason": error, "_raw": raw[:RAW_KEEP_CHARS]})
            if len(rows) >= self._block_rows:
                yield pa.Table.from_pylist(rows, schema=READ_SCHEMA)
                rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=READ_SCHEMA)

    def _records(self, f: pa.NativeFile, path: str) -> Iterator[tuple[int, object, str | None, str | None]]:
        """Yield ``(line, record, raw_text, parse_error)``; line is 1-based (row index for Parquet)."""
        if self._fmt == "parquet":
            for batch_start, batch in _parquet_batches(f, self._block_rows):
                for i, rec in enumerate(batch.to_pylist()):
                    yield batch_start + i + 1, rec, None, None
        elif path.endswith(".json") and self._fmt in ("alpaca", "sharegpt"):
            yield from _json_array_records(f)
        else:
            yield from _jsonl_records(f, self._limits.max_field_chars * 4)


def _parquet_batches(f: pa.NativeFile, batch_rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    start = 0
    for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
        yield start, batch
        start += batch.num_rows


def _json_array_records(f: pa.NativeFile) -> Iterator[tuple[int, object, str | None, str | None]]:
    """A whole-file JSON array (the classic alpaca_data.json); element index stands for the line."""
    text = f.read().decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        yield 1, None, text[:RAW_KEEP_CHARS], f"invalid_json: file is not a JSON array ({err})"
        return
    if not isinstance(data, list):
        yield 1, None, text[:RAW_KEEP_CHARS], f"wrong_type: file must hold a JSON array, got {type(data).__name__}"
        return
    for i, rec in enumerate(data):
        yield i + 1, rec, None, None


def _jsonl_records(f: pa.NativeFile, max_line_bytes: int, chunk_bytes: int = 1 << 22):
    """Stream lines in fixed-size chunks; blank lines are skipped but still counted."""
    tail, line_no = b"", 0
    while True:
        chunk = f.read(chunk_bytes)
        data = tail + chunk
        lines = data.split(b"\n")
        tail = lines.pop() if chunk else b""
        for raw in lines:
            line_no += 1
            if not raw.strip():
                continue
            text = raw.decode("utf-8", errors="replace")
            if len(raw) > max_line_bytes:
                yield (
                    line_no,
                    None,
                    text[:RAW_KEEP_CHARS],
                    f"oversize: line has {len(raw)} bytes, over {max_line_bytes}",
                )
                continue
            try:
                yield line_no, json.loads(text), text, None
            except json.JSONDecodeError as err:
                yield line_no, None, text, f"invalid_json: {err.msg} at column {err.colno}"
        if not chunk:
            return
