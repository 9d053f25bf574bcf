"""LLaMA-Factory dataset registries as ingest inputs: a v0 ``dataset_info.json`` (``file_name``,
``formatting``, ``columns``, ``tags``) or a v1 dataset YAML (``path`` or ``file_name`` with
``dataset_dir``, ``converter``, ``size``, ``weight``). Each named dataset becomes one
:class:`~instructscale.pools.ingest.PoolInput` whose rows carry the dataset's name as ``source``.

Hub datasets (``hf_hub_url``, ``ms_hub_url``, ``source: hf_hub`` without a local path) and preference
data (``ranking``, the ``pair`` converter) are refused by name: this platform reads local or object
storage files and tunes on instructions."""

from __future__ import annotations

import json
import logging
from typing import Any

import yaml
from pydantic import Field

from instructscale import storage
from instructscale.config import ConfigError, StrictModel

log = logging.getLogger(__name__)
FORMATTING = {"alpaca": "alpaca", "sharegpt": "sharegpt", "openai": "sharegpt"}  # v0 formatting -> format
CONVERTERS = {"alpaca": "alpaca", "sharegpt": "sharegpt", None: "jsonl"}  # v1 converter -> format (None: v1 rows)
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")


class RegistryInput(StrictModel):
    """Datasets named in a LLaMA-Factory registry file."""

    dataset_info: str = Field(description="a LLaMA-Factory dataset_info.json (v0) or dataset YAML (v1)")
    names: list[str] | None = Field(None, min_length=1, description="the datasets to read (default: all)")
    base_dir: str | None = Field(
        None, description="where relative file names start (default: the registry file's directory)"
    )


def registry_inputs(reg: RegistryInput, where: str) -> list[dict[str, Any]]:
    """The :class:`PoolInput` fields of each dataset ``reg`` names (``where``: for error messages)."""
    uri = storage.normalize(reg.dataset_info)
    if not storage.is_file(uri):
        raise ConfigError(f"{where}.dataset_info: {reg.dataset_info!r} is not a file")
    text = storage.read_text(uri)
    try:
        entries = json.loads(text) if uri.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{where}.dataset_info: {reg.dataset_info!r} does not parse: {err}") from None
    if not isinstance(entries, dict):
        raise ConfigError(f"{where}.dataset_info: {reg.dataset_info!r} must map dataset names to entries")
    names = reg.names or list(entries)
    missing = [n for n in names if n not in entries]
    if missing:
        raise ConfigError(f"{where}.names: {missing} are not in {reg.dataset_info} (it has {sorted(entries)})")
    base = storage.normalize(reg.base_dir) if reg.base_dir else storage.parent(uri)
    v1 = not uri.endswith(".json")
    return [_entry(name, entries[name], base, v1, f"{where}[{name}]") for name in names]


def _entry(name: str, entry: Any, base: str, v1: bool, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(entry).__name__}")
    file = entry.get("path") or entry.get("file_name")
    if not file or entry.get("source") == "hf_hub":
        hub = next((k for k in (*HUB_KEYS, "source") if entry.get(k)), "no file_name")
        raise ConfigError(f"{where}: only files are read here (it names {hub}); give a file_name or path")
    if entry.get("ranking") or entry.get("converter") == "pair":
        raise ConfigError(f"{where}: preference data (ranking / pair) is not instruction data")
    if v1:
        converter = entry.get("converter")
        if converter not in CONVERTERS:
            raise ConfigError(f"{where}.converter: {converter!r}; expected one of {sorted(filter(None, CONVERTERS))}")
        fmt = CONVERTERS[converter]
    else:
        formatting = entry.get("formatting", "alpaca")
        if formatting not in FORMATTING:
            raise ConfigError(f"{where}.formatting: {formatting!r}; expected one of {sorted(FORMATTING)}")
        fmt = FORMATTING[formatting]
    size = entry.get("size", entry.get("num_samples"))
    if size is not None:
        log.warning("%s: size/num_samples %s is not applied at ingest (sample sources with `mix:`)", where, size)
    path = _resolve(file, entry.get("dataset_dir"), base)
    if path.endswith(".parquet"):
        fmt = "parquet"
    return {
        "path": path,
        "format": fmt,
        "source": name,
        "columns": dict(entry.get("columns") or {}),
        "tags": dict(entry.get("tags") or {}),
        "weight": entry.get("weight"),
    }


def _resolve(file: str, dataset_dir: str | None, base: str) -> str:
    """A registry's file name as a path or URI: absolute ones as they are, others under ``base``."""
    if "://" in file or file.startswith("/"):
        return file
    if dataset_dir:
        file = f"{dataset_dir.rstrip('/')}/{file}"
        if "://" in dataset_dir or dataset_dir.startswith("/"):
            return file
    return storage.join(base, file)
