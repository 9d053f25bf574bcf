"""Export stage: canonical rows (a selection, or any stage's rows) in the formats users train with
elsewhere, ids included, so they can select here and train with the tool they know:

- ``llamafactory``: ``{name}.jsonl`` in LLaMA-Factory's sharegpt formatting with OpenAI-style role
  tags, plus the ``dataset_info.json`` entry that reads it. Reasoning goes inline (``<think>`` tags,
  which LLaMA-Factory's reasoning templates split off); its v0 format has no place for per-turn
  loss weights or for text beside a tool call, so those are left out.
- ``hf``: a Hugging Face ``datasets`` folder in the Hub's Parquet layout (``data/train-*.parquet``,
  the canonical columns; ``datasets.load_dataset(folder)`` reads it).
- ``openai``: ``{name}.jsonl`` of OpenAI chat fine-tuning rows: ``messages`` with ``tool_calls``,
  ``reasoning_content`` and ``weight`` (0/1) on assistant turns, and the row's ``tools``.

Each format streams part by part through the driver into one file per format (memory: one part);
``instructscale ingest`` reads every export back (the round trip is tested)."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from typing import ClassVar, Literal

from pydantic import Field

from instructscale import storage
from instructscale.chat import conversation, inline_reasoning, openai_turns
from instructscale.config import StrictModel
from instructscale.lifecycle import StageConfig, StageRun, part_files, require_dataset
from instructscale.plugins import register
from instructscale.progress import Progress
from instructscale.schema import POOL_SCHEMA, decode_metadata
from instructscale.stage import Stage
from instructscale.train.data import usable_rows

FORMATS = ("llamafactory", "hf", "openai")
LLAMAFACTORY_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "observation_tag": "tool",
    "function_tag": "function_call",
    "system_tag": "system",
}


class ExportOptions(StrictModel):
    """Which formats and the dataset's name; the `export` section of a pipeline config."""

    formats: list[Literal["llamafactory", "hf", "openai"]] = Field(default_factory=lambda: list(FORMATS), min_length=1)
    name: str = Field("instructscale", pattern=r"^[A-Za-z0-9_.-]+$", description="file and dataset_info name")


class ExportConfig(ExportOptions, StageConfig):
    """`instructscale export`: canonical rows -> out_dir/{llamafactory,hf,openai}."""

    input: str = Field(description="canonical Parquet rows (e.g. a selection's `selected`)")
    out_dir: str


def llamafactory_row(row: dict) -> dict:
    """A canonical row in LLaMA-Factory's sharegpt formatting (OpenAI-style tags)."""
    messages = []
    for m in conversation(row):
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = [{"name": c["name"], "arguments": json.loads(c["arguments"] or "{}")} for c in m["tool_calls"]]
            messages.append({"role": "function_call", "content": json.dumps(calls[0] if len(calls) == 1 else calls)})
            continue
        content = m.get("content") or ""
        if m.get("reasoning"):
            content = inline_reasoning(m["reasoning"], content)
        messages.append({"role": m["role"], "content": content})
    return {"id": row["id"], "messages": messages, "tools": row.get("tools") or "", **_provenance(row)}


def openai_row(row: dict) -> dict:
    """A canonical row as an OpenAI chat fine-tuning row."""
    turns = conversation(row)
    messages = openai_turns(turns, key="reasoning_content")
    for out, m in zip(messages, turns):
        if m["role"] == "assistant" and m.get("loss_weight") is not None:
            out["weight"] = int(m["loss_weight"])
    tools = json.loads(row["tools"]) if row.get("tools") else None
    return {"id": row["id"], "messages": messages, **({"tools": tools} if tools else {}), **_provenance(row)}


def _provenance(row: dict) -> dict:
    return {"source": row["source"], "metadata": decode_metadata(row.get("metadata"))}


def dataset_info_entry(name: str) -> dict:
    """The LLaMA-Factory ``dataset_info.json`` entry for the exported file."""
    return {
        name: {
            "file_name": f"{name}.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "tools": "tools"},
            "tags": LLAMAFACTORY_TAGS,
        }
    }


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


@register("export")
class Export(Stage[ExportConfig]):
    """Canonical rows as LLaMA-Factory JSON (with its dataset_info entry), a Hugging Face datasets
    folder and OpenAI chat JSONL."""

    Config = ExportConfig
    Options = ExportOptions
    summary = "export rows for LLaMA-Factory, Hugging Face datasets and OpenAI fine-tuning"
    after = "select"
    rebuilt: ClassVar[tuple[str, ...]] = FORMATS

    def check(self) -> ExportConfig:
        return self.cfg.model_copy(update={"input": require_dataset(self.cfg.input, "input")})

    def run(self, run: StageRun) -> dict:
        t0, cfg = time.time(), self.cfg
        files = part_files(cfg.input)
        rows = exported = 0
        progress = Progress("export")
        with ExitStack() as stack:
            lf = "llamafactory" in cfg.formats and stack.enter_context(
                storage.open_output(run.uri("llamafactory", f"{cfg.name}.jsonl"))
            )
            oa = "openai" in cfg.formats and stack.enter_context(
                storage.open_output(run.uri("openai", f"{cfg.name}.jsonl"))
            )
            for i, uri in enumerate(files):
                table = storage.read_parquet([uri], schema=POOL_SCHEMA)  # the canonical columns only
                trainable = usable_rows(table).to_pylist()  # rows without a response stay out of chat formats
                if lf:
                    lf.write(_jsonl([llamafactory_row(r) for r in trainable]))
                if oa:
                    oa.write(_jsonl([openai_row(r) for r in trainable]))
                if "hf" in cfg.formats:
                    storage.write_parquet(run.uri("hf", "data", f"train-{i:05d}-of-{len(files):05d}.parquet"), table)
                rows, exported = rows + table.num_rows, exported + len(trainable)
                progress.update(table.num_rows)
        if lf:
            storage.write_json(run.uri("llamafactory", "dataset_info.json"), dataset_info_entry(cfg.name))
        progress.close(f"{', '.join(cfg.formats)}")
        return {
            "rows": rows,
            "exported": exported,
            "without_response": rows - exported,
            "formats": {f: run.uri(f) for f in cfg.formats},
            "seconds": round(time.time() - t0, 2),
        }

    @classmethod
    def describe(cls, entry: dict) -> list[str]:
        return [f"export     {entry['exported']:,} rows as {', '.join(entry['formats'])}"]


def export(cfg: ExportConfig) -> dict:
    """Run the export stage; returns its manifest."""
    return Export(cfg).execute()
