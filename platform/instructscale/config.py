"""Typed configs: strict pydantic models loaded from YAML with errors that name the file and key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or value is wrong; the message names the file and the offending key."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, never silently ignored.

    ``OPERATIONAL`` names fields that change how work runs but not what it produces (an endpoint's
    URL, concurrency, retries): they are left out of a stage's identity, so changing them resumes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)
    OPERATIONAL: ClassVar[frozenset[str]] = frozenset()


def without_operational(model: BaseModel, data: Any) -> Any:
    """``data`` (``model`` dumped) without the OPERATIONAL fields of every nested section."""
    if not isinstance(model, BaseModel) or not isinstance(data, dict):
        return data
    out = {}
    for name, value in data.items():
        if name in getattr(model, "OPERATIONAL", ()):
            continue
        child = getattr(model, name, None)
        if isinstance(child, list) and isinstance(value, list):
            out[name] = [without_operational(c, v) for c, v in zip(child, value)]
        else:
            out[name] = without_operational(child, value)
    return out


def problems(err: ValidationError) -> str:
    """A validation error on one line, ``key.path: message; ...`` (for a section validated inside another)."""
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid config ({err.error_count()} problem(s))"]
    for e in err.errors():
        # a tagged union's tag (a model's class name) is left out: the key is the user's path
        key = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p[:1].isupper())) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key")
        else:
            lines.append(f"  - {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_config(model: type[M], data: Any, source: str = "<config>") -> M:
    """Validate a plain dict against ``model``; raise :class:`ConfigError` with readable lines."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file's top-level mapping; a ConfigError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(model: type[M], path: str | Path, overrides: dict[str, Any] | None = None) -> M:
    """Load a YAML file into ``model``; ``overrides`` (dotted keys) are applied on top. The
    process must be prepared for it first when it names plug-ins (:mod:`instructscale.process`)."""
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_config(model, data, str(path))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs as {dotted key: value}, each value read as YAML."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set demo.rows=1000")
        out[key] = yaml.safe_load(value)
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``dotted == "a.b"``, creating sections on the way; a number
    indexes a list (``select.scorers.0.batch_size``), and a plug-in named by a string becomes a
    mapping that takes its options (``select.selector.seed`` on ``selector: random``): the reason
    this is not a library's dotted-override parser."""
    *parents, leaf = dotted.split(".")
    node: Any = data
    for key in parents:
        if isinstance(node, list):
            index = _index(node, key, dotted)
            child = node[index]
        else:
            index, child = key, node.get(key)
        if isinstance(child, str):  # a plug-in named by a string: its options join it
            child = {"kind": child}
        if not isinstance(child, (dict, list)):
            child = {}
        node[index] = child
        node = child
    if isinstance(node, list):
        node[_index(node, leaf, dotted)] = value
    else:
        node[leaf] = value


def _index(items: list, key: str, dotted: str) -> int:
    if not key.isdigit() or int(key) >= len(items):
        raise ConfigError(f"--set {dotted}: {key!r} is not an index of a list of {len(items)}")
    return int(key)


def to_yaml(cfg: BaseModel) -> str:
    """A config as YAML (recorded next to a run's outputs)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


class ActorPool(StrictModel):
    """An autoscaling Ray Data actor pool: replica range, rows per call, resources per replica."""

    OPERATIONAL: ClassVar[frozenset[str]] = frozenset(
        {"min_replicas", "max_replicas", "num_cpus", "num_gpus", "resources"}
    )
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(1, ge=1)
    batch_size: int = Field(256, ge=1, description="rows per actor call")
    num_cpus: float = Field(1, ge=0, description="per replica")
    num_gpus: float = Field(0, ge=0, description="per replica")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description='custom Ray resources per replica, e.g. {"accelerator_type:L4": 1}: the replicas run on '
        "(and the autoscaler adds) the node types of the cluster config that provide them",
    )

    @model_validator(mode="after")
    def _replica_range(self) -> ActorPool:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) < min_replicas ({self.min_replicas})")
        return self

    def map_batches_args(self) -> dict[str, Any]:
        """The `Dataset.map_batches` arguments that run a callable class on this pool."""
        from ray.data import ActorPoolStrategy

        return {
            "compute": ActorPoolStrategy(min_size=self.min_replicas, max_size=self.max_replicas),
            "batch_size": self.batch_size,
            **self.ray_options(),
        }

    def ray_options(self) -> dict[str, Any]:
        """A replica's resources as Ray's ``.options()`` arguments."""
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "resources": self.resources}
