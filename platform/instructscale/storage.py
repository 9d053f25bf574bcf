"""One storage layer for every path: local paths, ``file://``, ``s3://``, ``gs://``, ``abfs://`` and
any other fsspec scheme, resolved to a ``pyarrow.fs`` file system.

Settings come from the standard environment variables (``AWS_ENDPOINT_URL``, ``AWS_REGION``,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``GOOGLE_APPLICATION_CREDENTIALS``); a config's
``storage:`` section may set the endpoint, the region and the *names* of the variables that hold
credentials, never their values (:func:`apply`). Object stores have no rename and no append: small
files are written whole (:func:`write_bytes`), and local writes go through a temp name and a rename
so that readers never see half a file.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field

from instructscale.config import ConfigError, StrictModel

ENV_ACCESS_KEY_NAME = "INSTRUCTSCALE_S3_ACCESS_KEY_ENV"  # the *name* of the variable holding the key
ENV_SECRET_KEY_NAME = "INSTRUCTSCALE_S3_SECRET_KEY_ENV"
ENV_SHARED_MOUNT = "INSTRUCTSCALE_SHARED_MOUNT"
ENV_CACHE_DIR = "INSTRUCTSCALE_CACHE_DIR"


class StorageConfig(StrictModel):
    """Where object-store settings come from. Values here are copied into run dirs: no secrets."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (else $AWS_ENDPOINT_URL)")
    region: str | None = Field(None, description="object-store region (else $AWS_REGION)")
    access_key_env: str = Field("AWS_ACCESS_KEY_ID", description="name of the variable holding the access key")
    secret_key_env: str = Field("AWS_SECRET_ACCESS_KEY", description="name of the variable holding the secret")
    shared_mount: bool = Field(False, description="a local run_dir is on a mount every node sees (NFS/EFS)")
    cache_dir: str | None = Field(None, description="per-node cache for models given as URIs")


def apply(cfg: StorageConfig) -> dict[str, str]:
    """Export ``cfg`` as environment variables (read by this process and by Ray workers started
    after it); returns the variables set, none of them a secret."""
    env = {ENV_ACCESS_KEY_NAME: cfg.access_key_env, ENV_SECRET_KEY_NAME: cfg.secret_key_env}
    if cfg.endpoint_url:
        env["AWS_ENDPOINT_URL"] = cfg.endpoint_url
    if cfg.region:
        env["AWS_REGION"] = cfg.region
    if cfg.shared_mount:
        env[ENV_SHARED_MOUNT] = "1"
    if cfg.cache_dir:
        env[ENV_CACHE_DIR] = cfg.cache_dir
    if any(os.environ.get(k) != v for k, v in env.items()):
        os.environ.update(env)
        filesystem.cache_clear()
    return env


def scheme(uri: str) -> str:
    """``"file"`` for local paths, else the URI scheme (``s3``, ``gs``, ...)."""
    parts = urlsplit(os.fspath(uri))
    return parts.scheme if len(parts.scheme) > 1 else "file"


def is_local(uri: str) -> bool:
    return scheme(uri) == "file"


def normalize(uri: str) -> str:
    """Local paths absolute and without ``file://`` (Ray workers run elsewhere); URIs unchanged."""
    uri = os.fspath(uri)
    if is_local(uri):
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return os.path.abspath(os.path.expanduser(path))
    return uri.rstrip("/")


def join(uri: str, *parts: str) -> str:
    uri = os.fspath(uri)
    if is_local(uri):
        return os.path.join(uri, *parts)
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def name(uri: str) -> str:
    return posixpath.basename(os.fspath(uri).rstrip("/"))


def parent(uri: str) -> str:
    uri = os.fspath(uri)
    if is_local(uri):
        return os.path.dirname(uri.rstrip("/"))
    return uri.rstrip("/").rsplit("/", 1)[0]


def _env(var_name_env: str, default_var: str) -> str | None:
    return os.environ.get(os.environ.get(var_name_env, default_var))


@lru_cache(maxsize=32)
def filesystem(scheme_: str, authority: str) -> pafs.FileSystem:
    """The file system for one scheme and bucket/account (cached; :func:`apply` clears it)."""
    if scheme_ == "file":
        return pafs.LocalFileSystem()
    if scheme_ in ("s3", "s3a"):
        kwargs: dict[str, Any] = {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:  # a bare S3FileSystem ignores AWS_ENDPOINT_URL
            kwargs["endpoint_override"] = endpoint
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        key = _env(ENV_ACCESS_KEY_NAME, "AWS_ACCESS_KEY_ID")
        secret = _env(ENV_SECRET_KEY_NAME, "AWS_SECRET_ACCESS_KEY")
        if key and secret:
            kwargs.update(access_key=key, secret_key=secret, session_token=os.environ.get("AWS_SESSION_TOKEN"))
        return pafs.S3FileSystem(**kwargs)
    try:
        return pafs.FileSystem.from_uri(f"{scheme_}://{authority}")[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
        pass
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec ships with the project's dependencies
        raise ConfigError(f"no file system for {scheme_}:// (install fsspec and its {scheme_} driver)") from None
    try:
        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(scheme_)))
    except (ImportError, ValueError) as err:
        raise ConfigError(f"no file system for {scheme_}://: {err}") from None


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(file system, path inside it)`` for a local path or URI."""
    uri = normalize(uri)
    sch = scheme(uri)
    if sch == "file":
        return filesystem("file", ""), uri
    parts = urlsplit(uri)
    path = f"{parts.netloc}{parts.path}".rstrip("/")
    if sch in ("abfs", "abfss", "az") and "@" in parts.netloc:  # container@account.dfs...
        container, _, account = parts.netloc.partition("@")
        return filesystem(sch, account), f"{container}{parts.path}".rstrip("/")
    return filesystem(sch, parts.netloc), path


def _info(uri: str) -> pafs.FileInfo:
    fs, path = resolve(uri)
    return fs.get_file_info(path)


def exists(uri: str) -> bool:
    info = _info(uri)
    if info.type != pafs.FileType.NotFound:
        return True
    if is_local(uri):
        return False
    fs, path = resolve(uri)  # an object-store "directory" exists when something lies under it
    return bool(fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True)))


def is_file(uri: str) -> bool:
    return _info(uri).type == pafs.FileType.File


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def read_json_if_exists(uri: str) -> Any | None:
    try:
        return read_json(uri)
    except (FileNotFoundError, NotADirectoryError):
        return None


@contextmanager
def open_output(uri: str) -> Iterator[pa.NativeFile]:
    """A stream that becomes the file ``uri`` only when the block ends without an error: readers see
    the old file or the complete new one. The stream writes a temp name next to ``uri``, renamed into
    place at the end (on object stores a server-side copy; pyarrow cannot abort an upload)."""
    fs, path = resolve(uri)
    folder, base = posixpath.split(path)
    tmp = posixpath.join(folder, f".{base}.{uuid.uuid4().hex}.tmp")
    if is_local(uri):
        os.makedirs(folder, exist_ok=True)
    try:
        with fs.open_output_stream(tmp) as f:
            yield f
        fs.move(tmp, path)
    finally:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so that readers see the old one or the complete new one."""
    with open_output(uri) as f:
        f.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))


def write_parquet(uri: str, table: pa.Table, row_group_size: int | None = None) -> None:
    """One Parquet file, written whole (see :func:`open_output`)."""
    with open_output(uri) as f:
        pq.write_table(table, f, row_group_size=row_group_size)


def parquet_schema(uri: str) -> pa.Schema:
    """The schema of one Parquet file (read from its footer)."""
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        return pq.read_schema(f)


def parquet_rows(uris: list[str]) -> int:
    """The number of rows in Parquet files, from their footers."""
    total = 0
    for uri in uris:
        fs, path = resolve(uri)
        with fs.open_input_file(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def read_parquet(
    uris: list[str], columns: list[str] | None = None, schema: pa.Schema | None = None, filter=None
) -> pa.Table:
    """The rows of Parquet files (all on one file system) as one table."""
    import pyarrow.dataset as pads

    if not uris:
        if schema is None:
            raise ValueError("no Parquet files to read")
        table = schema.empty_table()
        return table.select(columns) if columns else table
    fs, _ = resolve(uris[0])
    dataset = pads.dataset([resolve(u)[1] for u in uris], format="parquet", filesystem=fs, schema=schema)
    return dataset.to_table(columns=columns, filter=filter)


def list_files(uri: str, suffix: str | None = None, recursive: bool = True, hidden: bool = False) -> list[str]:
    """Files under ``uri`` (sorted URIs); names starting with ``_`` or ``.`` are skipped unless ``hidden``."""
    uri = normalize(uri)
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(path) :].lstrip("/")
        if not hidden and any(part.startswith(("_", ".")) for part in rel.split("/")):
            continue
        if suffix and not rel.endswith(suffix):
            continue
        out.append(join(uri, rel))
    return sorted(out)


def glob(pattern: str) -> list[str]:
    """Files matching a glob (``*``, ``?``, ``[...]``; ``**`` crosses directories)."""
    pattern = normalize(pattern)
    wild = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=None)
    if wild is None:
        return [pattern] if exists(pattern) else []
    base = pattern[:wild].rsplit("/", 1)[0]
    return [u for u in list_files(base, hidden=True) if fnmatch.fnmatchcase(u, pattern)]


def remove(uri: str) -> None:
    """Delete a file or a directory tree; a missing one is fine."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        fs.delete_file(path)
    elif info.type == pafs.FileType.Directory or not is_local(uri):
        fs.delete_dir_contents(path, missing_dir_ok=True)
        if is_local(uri) and os.path.isdir(path):
            os.rmdir(path)


def copy_tree(src: str, dst: str, src_fs: pafs.FileSystem | None = None) -> None:
    """Copy a directory tree between any two locations (local, object stores); with ``src_fs``,
    ``src`` is a path inside that file system (e.g. a Ray Train checkpoint's)."""
    src_fs, src_path = (src_fs, src) if src_fs is not None else resolve(src)
    dst_fs, dst_path = resolve(dst)
    if is_local(dst):
        for info in src_fs.get_file_info(pafs.FileSelector(src_path, recursive=True)):
            if info.type == pafs.FileType.File:  # pyarrow does not create local parent directories
                rel = os.path.relpath(os.path.dirname(info.path), src_path.rstrip("/"))
                os.makedirs(os.path.normpath(os.path.join(dst_path, rel)), exist_ok=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


def publish_tree(local_dir: str, dst: str) -> None:
    """Replace ``dst`` with a copy of ``local_dir``: local by rename, object stores by upload."""
    dst = normalize(dst)
    if is_local(dst):
        tmp = f"{dst}.{uuid.uuid4().hex[:8]}.tmp"
        shutil.copytree(local_dir, tmp)
        old = f"{dst}.{uuid.uuid4().hex[:8]}.old"
        if os.path.exists(dst):
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
        return
    remove(dst)
    copy_tree(local_dir, dst)


def model_ref(ref: str, field: str = "model") -> str:
    """A model directory (local, made absolute, or a URI) or a hub id unchanged; a path-like ``ref``
    (absolute, ./, ../, ~ or a URI) with no directory there is a ConfigError naming ``field``."""
    path_like = ref.startswith((".", "/", "~")) or not is_local(ref)
    if not path_like and not exists(ref):
        return ref  # a hub id
    if not exists(ref) or is_file(ref):
        raise ConfigError(f"{field}: {ref!r} is not a model directory")
    return normalize(ref)


def cache_root() -> Path:
    root = os.environ.get(ENV_CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "instructscale")
    return Path(root)


def local_dir(uri: str) -> str:
    """A local directory with the files of ``uri``: the directory itself when local, else a per-node
    cache keyed by the remote listing (names, sizes, times), so a changed model is fetched again."""
    uri = normalize(uri)
    if is_local(uri):
        return uri
    fs, path = resolve(uri)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    infos = sorted((i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File), key=lambda i: i.path)
    if not infos:
        raise ConfigError(f"{uri}: no files there")
    listing = "\n".join(f"{i.path}\t{i.size}\t{i.mtime_ns}" for i in infos)
    key = hashlib.sha1(f"{uri}\n{listing}".encode()).hexdigest()[:16]
    target = cache_root() / "remote" / f"{name(uri)}-{key}"
    if (target / ".complete").is_file():
        return str(target)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    pafs.copy_files(path, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    (tmp / ".complete").write_text(str(time.time()))
    try:
        os.replace(tmp, target)
    except OSError:  # another process on this node finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def scratch_root() -> str:
    """Local scratch space (staging before an upload, checkpoint staging), under the cache root so
    that what a killed process leaves behind stays with the caches, not among outputs."""
    root = cache_root() / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def local_scratch(prefix: str) -> str:
    """A fresh local scratch directory (the caller removes it)."""
    return tempfile.mkdtemp(prefix=f"{prefix}-", dir=scratch_root())
