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

from instructscale.pools.records import ColumnMap, RecordLimits, RowError, normalize_record
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
    "hf": (["arrow", "parquet"], "auto"),  # a Hugging Face `datasets` folder: save_to_disk Arrow, or Parquet
    "seed_tasks": (["jsonl", "json"], "seed_task"),  # Self-Instruct's seed_tasks.jsonl
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
        columns: ColumnMap = ColumnMap(),
        **kwargs,
    ):
        if fmt not in FORMATS:
            raise ValueError(f"unknown pool format {fmt!r}; expected one of {sorted(FORMATS)}")
        super().__init__(paths, file_extensions=FORMATS[fmt][0], **kwargs)
        self._fmt, self._style = fmt, FORMATS[fmt][1]
        self._source, self._limits, self._block_rows = source, limits, block_rows
        self._uri_prefix = uri_prefix  # "s3://" etc.: quarantine records name files as the user did
        self._columns = columns

    def _open_input_source(self, filesystem, path: str, **open_args) -> pa.NativeFile:
        if path.endswith(".parquet"):  # Parquet needs random access for its footer
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
                        rec,
                        style=self._style,
                        file=path,
                        line=line,
                        source=source,
                        limits=self._limits,
                        columns=self._columns,
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
        if path.endswith((".parquet", ".arrow")):
            batches = _arrow_batches(f) if path.endswith(".arrow") else _parquet_batches(f, self._block_rows)
            for batch_start, batch in batches:
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


def _arrow_batches(f: pa.NativeFile) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The record batches of an Arrow IPC stream (the files `datasets.save_to_disk` writes)."""
    start = 0
    for batch in pa.ipc.open_stream(f):
        yield start, batch
        start += batch.num_rows


class _Reader:
    """A file-like view of an Arrow stream for ijson, counting the bytes it has handed out."""

    def __init__(self, f: pa.NativeFile):
        self.f, self.offset = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n if n is not None and n >= 0 else None)
        self.offset += len(data)
        return data


def _json_array_records(f: pa.NativeFile) -> Iterator[tuple[int, object, str | None, str | None]]:
    """The elements of a JSON array file (the classic alpaca_data.json), parsed incrementally with
    ijson: bounded memory, and a file cut mid-element keeps every complete element before the cut.
    The element's 1-based index stands for the line."""
    import ijson

    reader = _Reader(f)
    head = f.read(64)
    first = head.lstrip()[:1]
    if first != b"[":  # not an array: say what it is
        text = (head + f.read()).decode("utf-8", errors="replace")
        try:
            kind = type(json.loads(text)).__name__
        except json.JSONDecodeError as err:
            yield 1, None, text[:RAW_KEEP_CHARS], f"invalid_json: file is not a JSON array ({err})"
            return
        yield 1, None, text[:RAW_KEEP_CHARS], f"wrong_type: file must hold a JSON array, got {kind}"
        return
    reader.offset = len(head)
    index = 0
    items = ijson.items(_Prefixed(head, reader), "item", use_float=True)
    try:
        for index, rec in enumerate(items, start=1):
            yield index, rec, None, None
    except (ijson.JSONError, UnicodeDecodeError) as err:
        text = err.args[0].decode("utf-8", "replace") if err.args and isinstance(err.args[0], bytes) else str(err)
        detail = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        if isinstance(err, UnicodeDecodeError) or "UTF8" in text:
            reason = "invalid_utf8"
        elif "premature EOF" in text or "Incomplete JSON" in text:
            reason = "truncated_json"
        else:
            reason = "invalid_json"
        yield index + 1, None, None, f"{reason}: the array breaks off after element {index} ({detail})"


class _Prefixed:
    """``head`` then the rest of ``reader``, for a parser that must see the bytes already peeked."""

    def __init__(self, head: bytes, reader: _Reader):
        self.head, self.reader = head, reader

    def read(self, n: int = -1) -> bytes:
        if n == 0:  # ijson probes the stream's type with read(0)
            return b""
        if self.head:
            out, self.head = self.head, b""
            return out
        return self.reader.read(n)


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
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:  # never silently replaced: the row is not what was written
                shown = raw.decode("utf-8", errors="replace")[:RAW_KEEP_CHARS]
                yield line_no, None, shown, f"invalid_utf8: {err.reason} at byte {err.start}"
                continue
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
