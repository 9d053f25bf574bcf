"""Preparing a process for a config, and configs as they travel to Ray workers.

Parsing a config has no side effects. What a process needs before it can parse one, or run the
plug-ins it names, is one explicit step, :func:`prepare`: import the ``plugins`` modules (so their
names validate), apply the ``storage`` settings (environment variables read by the storage layer),
and set the secrets the driver handed over. The driver prepares itself when it loads a config
(the CLI) or runs a stage; every Ray actor, task and training worker receives a :class:`Shipped`
config and prepares itself in :meth:`Shipped.load` (Curator's ``setup()``, once per process).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from instructscale import storage
from instructscale.config import parse_config, read_yaml, set_dotted
from instructscale.plugins import load_plugins, resolve_entry

M = TypeVar("M", bound=BaseModel)


def prepare(plugins: Iterable[str] = (), storage_settings: Any = None, secrets: Mapping[str, str] = ()) -> None:
    """Import ``plugins``, apply the storage settings and export ``secrets`` into this process's
    environment (values the driver read from its own: API keys). Idempotent."""
    load_plugins([resolve_entry(str(e)) for e in plugins])
    if storage_settings is not None:
        storage.apply(storage.StorageConfig.model_validate(storage_settings))
    os.environ.update(dict(secrets))


def prepare_for(data: Mapping[str, Any]) -> None:
    """:func:`prepare` for the ``plugins`` and ``storage`` a raw config mapping names."""
    prepare(data.get("plugins") or (), data.get("storage"))


def load(model: type[M], path: str, overrides: Mapping[str, Any] | None = None) -> M:
    """A YAML config for this process: its plug-ins imported (and ``overrides``, dotted keys,
    applied), then parsed; what the CLI does for a command's config."""
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    prepare_for(data)
    return parse_config(model, data, str(path))


def secret_values(names: Iterable[str | None]) -> dict[str, str]:
    """The driver's values of the environment variables ``names`` (the unset ones left out)."""
    return {n: os.environ[n] for n in dict.fromkeys(names) if n and n in os.environ}


@dataclass(frozen=True)
class Shipped(Generic[M]):
    """A config on its way to Ray workers: its class's import path and its JSON (a config's plug-in
    classes may live in a user's file, which a worker can import only once prepared), plus the
    secrets its plug-ins read from the environment (never in the config, a log or Ray's runtime env)."""

    cls: str
    data: str
    secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, cfg: M, secrets: Mapping[str, str] = ()) -> Shipped[M]:
        kind = type(cfg)
        return cls(
            f"{kind.__module__}:{kind.__qualname__}", cfg.model_dump_json(), tuple(sorted(dict(secrets).items()))
        )

    def load(self) -> M:
        """The config, after preparing this process for it (both once per process)."""
        return _load(self.cls, self.data, self.secrets)


@lru_cache(maxsize=16)
def _load(cls: str, data: str, secrets: tuple[tuple[str, str], ...]) -> Any:
    raw = json.loads(data)
    prepare(raw.get("plugins") or (), raw.get("storage"), dict(secrets))
    module, _, name = cls.partition(":")
    owner = sys.modules.get(module) or importlib.import_module(module)
    kind = owner
    for part in name.split("."):
        kind = getattr(kind, part)
    return kind.model_validate(raw)
