"""Plug-in contracts and their registries: extend instructscale by registering, not by editing.

Eight small base classes, one per extension point; a class joins a registry with ``@register``:

=================  ============================================  ==========================
contract           what it does                                  runs in
=================  ============================================  ==========================
``RowFilter``      one check per row, a reason to drop it        Ray Data tasks (select),
                                                                 before or after scoring
``Scorer``         score columns for a batch of rows             Ray Data tasks or actors
``Selector``       spends a row budget on scored rows            driver / Ray tasks
``GenerationMode`` prompts for rows, completions -> output rows  generation actors
``Backend``        an inference engine for chat completions      generation/judge actors
``Curriculum``     the order of training rows, step by step      driver (the plan)
``TrainCallback``  hooks into the training loop                  Ray Train workers
``EvalSuite``      prompts, and how a model's answers score      the evaluate stage
=================  ============================================  ==========================

A plug-in has a nested ``Config`` (a strict pydantic model); configs pick one by name, as a string
(``selector: random``) or a mapping with ``kind`` and the plug-in's options. Built-ins use the same
path. Your own plug-ins load from ``plugins: [my_module, ./my_plugins.py]`` in any stage config or
from the ``instructscale.plugins`` entry-point group; every process imports them before it parses a
config (:mod:`instructscale.process`), every Ray actor, task and training worker included.

A plug-in states what it needs through its contract, never through core code that knows its name:
``checked()`` (run on the driver before a stage starts: a missing model, an unreachable endpoint), a
Config field marked :data:`SECRET_ENV` (the name of an environment variable whose value the driver
hands to the workers), and the class attributes each contract documents.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, Field, PlainValidator, SerializeAsAny

from instructscale import storage
from instructscale.backends.base import Completion, Conversation, RowFault, SamplingConfig
from instructscale.config import ActorPool, ConfigError, StrictModel

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

ENTRY_POINT_GROUP = "instructscale.plugins"
EMBEDDING = "embedding"  # the column a scorer fills for selectors that need embeddings
SECRET_ENV = {"secret_env": True}  # json_schema_extra of a field naming a variable that holds a secret
P = TypeVar("P", bound="Plugin")


class PluginConfig(StrictModel):
    """Options of one plug-in; ``kind`` is the name it was registered under."""

    kind: str


class ScorerConfig(PluginConfig):
    """Options of a scorer; ``name`` prefixes its columns, so one kind can run twice in a config."""

    name: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9]*$",
        description="this scorer's columns become <name>_<column> (e.g. two model scorers: the student's "
        "ifd and a small model's small_ifd); such a scorer brings its weights and difficulty, prefixed, "
        "but not its after-scoring filters",
    )


class ActorScorerConfig(ActorPool, ScorerConfig):
    """Options of a scorer that runs in an actor pool: replicas, rows per call, resources."""


class Plugin:
    """Base of every contract. ``self.config`` is the plug-in's validated ``Config``."""

    registry: ClassVar[Registry]
    name: ClassVar[str] = ""
    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig):
        self.config = config

    def checked(self) -> PluginConfig:
        """On the driver, before the stage starts: the config with its paths normalised; raise
        ConfigError for what cannot work (a missing model, an endpoint that does not answer)."""
        return self.config


def secret_envs(model: Any) -> list[str]:
    """The variable names held by :data:`SECRET_ENV` fields anywhere in ``model`` (a config)."""
    if isinstance(model, (list, tuple)):
        return [n for item in model for n in secret_envs(item)]
    if not isinstance(model, BaseModel):
        return []
    names = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if info.json_schema_extra == SECRET_ENV:
            names += [value] if value else []
        else:
            names += secret_envs(value)
    return names


class Registry(Generic[P]):
    """Name -> plug-in class for one contract; built-in modules are imported on first use."""

    def __init__(self, kind: str, builtins: tuple[str, ...]):
        self.kind, self._builtins, self._classes = kind, builtins, {}

    def add(self, name: str, cls: type[P]) -> None:
        old = self._classes.get(name)
        if old is not None and _origin(old) != _origin(cls):
            raise ValueError(f"{self.kind} {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        self._classes[name] = cls

    def names(self) -> list[str]:
        _load_builtins(self)
        return sorted(self._classes)

    def get(self, name: str) -> type[P]:
        _load_builtins(self)
        if name not in self._classes:
            raise ValueError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}. A plug-in of "
                f"your own must be imported: list its module or file under `plugins:`"
            )
        return self._classes[name]

    def parse(self, value: Any) -> PluginConfig:
        """A config for the plug-in ``value`` names (a string, a mapping with ``kind``, or a config)."""
        if isinstance(value, PluginConfig):
            value = value.model_dump()
        if isinstance(value, str):
            value = {"kind": value}
        if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
            raise ValueError(f"expected a {self.kind} name or a mapping with `kind`, got {value!r}")
        return self.get(value["kind"]).Config.model_validate(value)

    def build(self, config: PluginConfig, *args: Any) -> P:
        """An instance of the plug-in ``config`` selects."""
        return self.get(config.kind)(config, *args)


def _origin(cls: type) -> tuple[str, str]:
    try:
        source = os.path.realpath(inspect.getfile(cls))
    except (TypeError, OSError):
        source = cls.__module__
    return source, cls.__qualname__


def spec(base: type[Plugin]) -> Any:
    """The pydantic field type of a config that picks one ``base`` plug-in by name."""
    return Annotated[SerializeAsAny[PluginConfig], PlainValidator(base.registry.parse)]


def register(name: str):
    """Class decorator: add a plug-in to its contract's registry under ``name``."""

    def add(cls: type[P]) -> type[P]:
        bases = [b for b in cls.__mro__[1:] if "registry" in b.__dict__]
        if not bases:
            raise TypeError(f"{cls.__qualname__} does not subclass a plug-in contract")
        cls.name = name
        if not issubclass(cls.Config, bases[0].Config):
            raise TypeError(f"{cls.__qualname__}.Config must subclass {bases[0].__name__}.Config")
        bases[0].registry.add(name, cls)
        return cls

    return add


_imported_builtins: set[str] = set()
_entry_points_loaded = False


def _load_builtins(registry: Registry) -> None:
    global _entry_points_loaded
    for module in registry._builtins:
        if module not in _imported_builtins:
            _imported_builtins.add(module)
            importlib.import_module(module)
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()


def resolve_entry(entry: str) -> str:
    """A plug-in entry as workers need it: files made absolute, module names unchanged."""
    if entry.endswith(".py") or os.sep in entry:
        return os.path.abspath(os.path.expanduser(entry))
    return entry


def load_plugins(entries: list[str]) -> None:
    """Import plug-in modules (``pkg.module``) or files (``path/to/plugins.py``); each import registers."""
    for entry in entries:
        entry = resolve_entry(entry)
        if not entry.endswith(".py"):
            importlib.import_module(entry)
            continue
        real = os.path.realpath(entry)
        if any(
            getattr(m, "__file__", None) and os.path.realpath(m.__file__) == real for m in list(sys.modules.values())
        ):
            continue  # already imported (by its module name, or earlier by path)
        if not os.path.isfile(entry):
            raise ConfigError(f"plugins: {entry} not found")
        folder = os.path.dirname(entry)
        if folder not in sys.path:  # as for a script: the file may import its neighbours
            sys.path.append(folder)
        module_name = f"instructscale_plugin_{os.path.splitext(os.path.basename(entry))[0]}"
        spec_ = importlib.util.spec_from_file_location(module_name, entry)
        module = importlib.util.module_from_spec(spec_)
        sys.modules[module_name] = module
        spec_.loader.exec_module(module)


# ----------------------------------------------------------------------------------------------
# The contracts


class RowFilter(Plugin):
    """One check per row (as datatrove's filters): return a short reason to drop the row, or None.

    A filter runs before scoring (the default: cheap checks, and a removed row is never scored) on
    the canonical columns plus ``prompt`` (the user-side text), ``prompt_chars``, ``output_chars``
    and ``repetition``; or, with ``after_scoring = True``, on the scored rows: ``row`` then holds
    ``id`` and the score ``columns`` it names (a judge's rating, IFD)."""

    registry: ClassVar[Registry] = Registry("filter", ("instructscale.select.filters",))
    after_scoring: ClassVar[bool] = False
    columns: ClassVar[tuple[str, ...]] = ()  # the score columns an after-scoring filter reads

    def filter(self, row: dict) -> str | None:
        raise NotImplementedError

    @classmethod
    def reads(cls, config: PluginConfig) -> tuple[str, ...]:
        """The score columns this after-scoring filter reads with ``config`` (default: ``columns``)."""
        return cls.columns


class Scorer(Plugin):
    """Adds ``columns`` to a batch of rows (rows that a filter already removed are not scored).
    With ``actor = True`` the scorer runs in an autoscaling actor pool (``setup`` loads a model once
    per replica; its Config subclasses :class:`ActorScorerConfig`), otherwise in Ray Data tasks.
    A row with a null in one of ``required`` is removed as ``unscorable``.

    What a configured scorer brings to the selection's defaults: ``weights`` (score column ->
    weight), ``difficulty`` (the column the curriculum reads) and ``filters`` (after-scoring filters,
    e.g. the IFD cap); each applies where the config leaves that setting out. ``model_role``: the
    pipeline's model (``student`` or ``teacher``) that fills an unset ``model`` option. ``heavy``:
    columns the decisions never read (embeddings), left out when they scan the rows."""

    registry: ClassVar[Registry] = Registry("scorer", ("instructscale.scorers",))
    Config: ClassVar[type[PluginConfig]] = ScorerConfig
    columns: ClassVar[dict[str, pa.DataType]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    actor: ClassVar[bool] = False
    weights: ClassVar[dict[str, float]] = {}
    difficulty: ClassVar[str | None] = None
    filters: ClassVar[tuple[Any, ...]] = ()
    model_role: ClassVar[str | None] = None
    heavy: ClassVar[tuple[str, ...]] = ()

    def setup(self) -> None:
        """Load what the scorer needs (called once per task or replica, before ``score``)."""

    def score(self, rows: list[dict]) -> dict[str, list]:
        """One value per row for each of ``columns`` (None where a row cannot be scored)."""
        raise NotImplementedError

    @classmethod
    def summarize(cls, batch: pa.Table) -> dict[str, int]:
        """Counts over a batch of scored rows, summed into the stage's manifest (e.g. unparsable ratings)."""
        return {}

    @staticmethod
    def prefix(spec: Any) -> str:
        """``<name>_`` for a named scorer's spec (a config or its raw mapping), else ``""``."""
        name = spec.get("name") if isinstance(spec, dict) else getattr(spec, "name", None)
        return f"{name}_" if name else ""

    @staticmethod
    def columns_of(spec: PluginConfig, which: str = "columns") -> list[str]:
        """The scorer's ``columns`` (or ``required``, ``heavy``) as the rows carry them under ``spec``."""
        return [Scorer.prefix(spec) + c for c in getattr(Scorer.registry.get(spec.kind), which)]


class SelectorConfig(PluginConfig):
    seed: int = 0
    shard_rows: int = Field(
        50_000,
        ge=100,
        description="embedding selectors run per shard of this size, then "
        "merge (or, when the candidates would be every row, "
        "split the budget over the shards)",
    )
    oversample: float = Field(2.0, ge=1, description="candidates each shard passes to the merge, x its share")


class Selector(Plugin):
    """Spends a budget: picks ``k`` of the eligible rows of one stratum (or one shard of it).

    ``score`` is the weighted score (higher is better), or the column ``ranks_by`` names;
    ``embeddings`` (the :data:`EMBEDDING` column) is given when ``needs_embeddings`` (then the stage
    shards large strata and merges the shards' picks). A mixture in tokens cuts a source's picks
    at its share, dropping the lowest-scored first, or at random when ``ordered`` is false."""

    registry: ClassVar[Registry] = Registry("selector", ("instructscale.select.selectors",))
    Config: ClassVar[type[PluginConfig]] = SelectorConfig
    needs_embeddings: ClassVar[bool] = False
    ranks_by: ClassVar[str | None] = None
    ordered: ClassVar[bool] = True

    def select(self, score: np.ndarray, embeddings: np.ndarray | None, k: int, seed: int) -> np.ndarray:
        """Positions of the chosen rows."""
        raise NotImplementedError


class Passes(Protocol):
    """What a multi-pass generation mode drives, on the driver (the generation stage provides it)."""

    input: str  # the stage's input rows
    out_dir: str  # the stage's output: a pass into it (and commit, copy_parts) writes the stage's rows

    def work(self, *parts: str) -> str:
        """A URI under the run's scratch space for the mode's intermediate datasets."""

    def generate(
        self, input_uri: str, out_dir: str, label: str, step: str = "", sampling: SamplingConfig | None = None
    ) -> str:
        """One pass of the teacher actors over ``input_uri`` into ``out_dir/rows`` (returned):
        ``step`` tells the mode's ``prompts``/``outputs`` which pass they serve (``self.step``);
        ``sampling`` replaces the stage's own. Resumable per part."""

    def copy_parts(
        self, rows_uri: str, prefix: str, rejected_only: bool = False, parent_key: str | None = None
    ) -> None:
        """Commit the parts of a pass's output into the stage's output rows."""

    def commit(self, name: str, table: pa.Table) -> None:
        """Commit ``table`` (output rows) as the part ``name`` of the stage's output rows."""

    def input_rows(self, columns: list[str]) -> pa.Table:
        """The stage's input rows (a multi-pass mode's seeds), read on the driver."""


class GenerationMode(Plugin):
    """What a teacher is asked for each row, and how its completions become output rows.

    Output rows carry the canonical columns plus ``parent_id``, ``sample_idx``, the ``gen_*``
    columns and ``reject_reason`` (build them with :meth:`output_row`). A multi-pass mode
    (``multi_pass = True``) plans its passes in :meth:`drive`; each pass's actors build the mode with
    that pass's ``step``."""

    registry: ClassVar[Registry] = Registry(
        "generation mode",
        ("instructscale.generate.modes", "instructscale.generate.self_instruct", "instructscale.generate.evolve"),
    )
    multi_pass: ClassVar[bool] = False  # True: the stage calls drive() instead of one pass over the input

    def __init__(self, config: PluginConfig, options: Any = None, step: str = ""):
        super().__init__(config)
        self.options = options  # the stage's GenerateOptions: sampling, system prompt, model
        self.step = step  # the pass this instance serves (multi-pass modes)

    def drive(self, passes: Passes) -> None:
        """A multi-pass mode's plan (rounds, follow-up passes), run on the driver; what it leaves in
        ``passes.out_dir`` is the stage's output. Prompts and outputs still run in the teacher actors."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise ValueError when the stage's other options (``self.options``) do not fit this mode."""

    def needs_teacher(self, row: dict) -> bool:
        return True

    def output_row(self, row: dict, completion: Completion | None, idx: int, **changes: Any) -> dict:
        """An output row: ``row`` with ``changes``, its lineage and the completion's statistics."""
        out = {
            **row,
            **changes,
            "parent_id": row["id"],
            "sample_idx": idx,
            "reject_reason": None,
            "gen_model": None,
            "gen_tokens": None,
            "gen_logprob": None,
            "finish_reason": None,
        }
        if completion is not None:
            out.update(
                gen_model=getattr(self.options, "model", None),
                gen_tokens=completion.num_tokens,
                gen_logprob=completion.mean_logprob,
                finish_reason=completion.finish_reason,
            )
        return out

    def prompts(self, rows: list[dict]) -> list[Conversation]:
        raise NotImplementedError

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        raise NotImplementedError


class Backend(Plugin):
    """An inference engine: chat conversations in, ``sampling.n`` completions per conversation out.

    ``generate`` may answer a conversation it cannot serve with a :class:`RowFault` instead of
    completions (an HTTP 400 for that row, say); an exception fails the whole call, and the stage then
    isolates the failing rows by splitting the batch. ``check`` rejects rows before they reach the
    engine (a prompt longer than the context). A ``remote`` backend serves a model behind an
    endpoint; a local one loads a directory (fetched once per node when given as a URI)."""

    registry: ClassVar[Registry] = Registry(
        "backend", ("instructscale.backends.vllm", "instructscale.backends.hf", "instructscale.backends.openai")
    )
    remote: ClassVar[bool] = False

    def __init__(self, config: PluginConfig, model: str):
        super().__init__(config)
        self.model = model

    @classmethod
    def load(cls, config: PluginConfig, model: str) -> Backend:
        """The backend ``config`` names, serving ``model`` (a local dir, URI or an endpoint's model)."""
        kind = cls.registry.get(config.kind)
        return kind(config, model if kind.remote else storage.local_dir(model))

    @classmethod
    def model_ref(cls, config: PluginConfig, model: str, field: str = "model") -> str:
        """``model`` as the stage records it: an endpoint's model name as is, else a checked path."""
        return model if cls.registry.get(config.kind).remote else storage.model_ref(model, field)

    def generate(
        self, conversations: list[Conversation], sampling: SamplingConfig
    ) -> list[list[Completion] | RowFault]:
        raise NotImplementedError

    def check(self, conversations: list[Conversation], sampling: SamplingConfig) -> list[str | None]:
        """A reason to reject each conversation before it reaches the engine, or None."""
        return [None if any((m.get("content") or "").strip() for m in c) else "empty_prompt" for c in conversations]


class CurriculumConfig(PluginConfig):
    difficulty_key: str = Field("difficulty", description="column, or metadata key, holding difficulty")


class Curriculum(Plugin):
    """The training order, decided up front: global batches of row positions for the whole run
    (anything numpy reads as a (steps, global_batch) integer array)."""

    registry: ClassVar[Registry] = Registry("curriculum", ("instructscale.train.curriculum",))
    Config: ClassVar[type[PluginConfig]] = CurriculumConfig
    needs_difficulty: ClassVar[bool] = True

    def schedule(
        self, difficulty: np.ndarray, global_batch: int, epochs: int, seed: int, max_steps: int | None
    ) -> np.ndarray | list[list[int]]:
        raise NotImplementedError


class TrainCallback(Plugin):
    """Hooks into every training worker's loop (logging, alerts, drills)."""

    registry: ClassVar[Registry] = Registry("train callback", ())

    def on_step_start(self, step: int, rank: int, out_dir: str) -> None:
        """Called before step ``step`` (1-based) on every worker."""


class SuiteConfig(PluginConfig):
    max_prompts: int | None = Field(None, ge=1, description="the first N prompts only (a fixed subset)")
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(max_tokens=256, temperature=0.0))


class EvalSuite(Plugin):
    """Prompts a model answers, and how each answer scores (the evaluate stage).

    ``prompts(data)`` gives the suite's rows: an ``id``, the ``conversation`` sent to the model, and
    whatever ``score`` needs (``data``: the stage's held-out rows, for suites that use them).
    ``score(row, response)`` gives the row's metric values (None: not scorable for that metric).
    ``metrics`` names them, higher is better unless listed in ``lower_is_better`` (``descriptive``
    ones have no better); a metric listed in ``weights`` is a ratio over units of the row (its
    instructions), weighted by that score field. The stage reports each with its interval, and
    between two models their paired difference. ``judged``:
    the pairwise judge compares two models' answers to these prompts (a win rate).
    ``model_scores(model, rows)`` adds per-row values that need the model itself (a loss)."""

    registry: ClassVar[Registry] = Registry("eval suite", ("instructscale.suites",))
    Config: ClassVar[type[PluginConfig]] = SuiteConfig
    metrics: ClassVar[tuple[str, ...]] = ()
    lower_is_better: ClassVar[tuple[str, ...]] = ()
    descriptive: ClassVar[tuple[str, ...]] = ()  # compared, but neither better nor worse (answer length)
    weights: ClassVar[dict[str, str]] = {}  # metric -> the score field weighting it (instructions per prompt)
    judged: ClassVar[bool] = False

    def prompts(self, data: str | None) -> list[dict]:
        raise NotImplementedError

    def score(self, row: dict, response: str | None) -> dict[str, float | None]:
        raise NotImplementedError

    def model_scores(self, model: str, rows: list[dict]) -> dict[str, dict[str, float | None]]:
        """Per row id, values computed with the model (not its answers); none by default."""
        return {}

    def counts(self, scored: list[dict]) -> dict[str, int]:
        """Counts the report states beside the metrics (e.g. unscorable instructions)."""
        return {}


FilterSpec = spec(RowFilter)
ScorerSpec = spec(Scorer)
SelectorSpec = spec(Selector)
ModeSpec = spec(GenerationMode)
BackendSpec = spec(Backend)
CurriculumSpec = spec(Curriculum)
CallbackSpec = spec(TrainCallback)
SuiteSpec = spec(EvalSuite)
