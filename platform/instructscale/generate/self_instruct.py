"""Self-Instruct as the paper runs it (Wang et al. 2023), in rounds.

Each round writes prompts that show ``human_examples`` seed tasks and ``machine_examples`` tasks
accepted in earlier rounds and ask for ``tasks_per_prompt`` new ones; the teacher actors answer
them and parse the answers into candidate tasks. On the driver, every candidate (in id order)
passes the paper's filters (length, leading punctuation or non-ASCII, keyword blacklist) and the
novelty filter: ROUGE-L F against every instruction already in the pool (seeds, earlier rounds,
and this round's accepted ones) must stay under ``rouge_l_max``. Rounds stop at ``target_tasks``.
The accepted tasks then get two more passes: classification identification, and one instance
each, input-first (output-first for classification tasks, so that labels are not all alike).

The driver holds the seeds and the synthesized tasks (bounded by ``target_tasks``), never a pool.
Resume is per round: a round is done once its accepted tasks are committed; each pass resumes per
part. Every candidate ends in the stage's rows: accepted with its instance, or with its reason.
"""

from __future__ import annotations

import math
import random

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from instructscale import storage
from instructscale.backends.base import Completion, Conversation
from instructscale.generate.modes import Mode, packaged_template
from instructscale.generate.novelty import NoveltyIndex
from instructscale.generate.tasks import DEFAULT_BLACKLIST, parse_instance, parse_tasks, task_problem
from instructscale.lifecycle import commit_part, commit_records, part_files
from instructscale.plugins import Passes, PluginConfig, register
from instructscale.schema import POOL_COLUMNS, POOL_SCHEMA, decode_metadata, encode_metadata

PROPOSE, CLASSIFY, INSTANCE = "propose", "classify", "instance"
ACCEPTED = "accepted"


@register("self_instruct")
class SelfInstruct(Mode):
    """Iterative Self-Instruct: rounds of new tasks from seed and machine tasks, filtered for
    novelty, then classified and given an instance each."""

    multi_pass = True

    class Config(PluginConfig):
        kind: str = "self_instruct"
        rounds: int = Field(1, ge=1)
        target_tasks: int = Field(100, ge=1, description="stop once this many new tasks are accepted")
        human_examples: int = Field(6, ge=0, description="seed tasks shown per prompt")
        machine_examples: int = Field(2, ge=0, description="tasks of earlier rounds shown per prompt")
        tasks_per_prompt: int = Field(4, ge=1, description="new tasks each prompt asks for")
        prompts_per_round: int | None = Field(
            None,
            ge=1,
            description="default: enough to propose twice the tasks still wanted, spread over the rounds left",
        )
        rouge_l_max: float = Field(0.7, gt=0, le=1, description="too similar at or above this ROUGE-L F")
        keyword_blacklist: list[str] = Field(default_factory=lambda: list(DEFAULT_BLACKLIST))
        min_words: int = Field(4, ge=1)
        max_words: int = Field(150, ge=1)
        instances: bool = Field(True, description="classify each accepted task and write one instance for it")
        template: str | None = Field(None, description="prompt with {examples} and {n}; default: the packaged one")

    # -- in the teacher actors: one prompt per row, by the pass (self.step)
    def prompts(self, rows: list[dict]) -> list[Conversation]:
        out = []
        for row in rows:
            if self.step == PROPOSE:  # the prompt was written by the driver
                text = row["instruction"]
            elif self.step == CLASSIFY:
                text = packaged_template("self_instruct_classify").format(instruction=row["instruction"])
            else:
                first = "output_first" if decode_metadata(row["metadata"]).get("is_classification") else "input_first"
                text = packaged_template(f"self_instruct_{first}").format(instruction=row["instruction"])
            out.append([*self.system, {"role": "user", "content": text}])
        return out

    def outputs(self, row: dict, completions: list[Completion]) -> list[dict]:
        if self.step == PROPOSE:
            return self._candidates(row, completions)
        meta = decode_metadata(row["metadata"])
        text = completions[0].text
        if self.step == CLASSIFY:
            meta.update(is_classification=text.strip().lower().startswith("yes"))
            return [self.output_row(row, completions[0], 0, metadata=encode_metadata(meta))]
        instance = parse_instance(text, output_first=bool(meta.get("is_classification")))
        changes = {"input": instance[0], "output": instance[1]} if instance else {}
        meta["instances"] = [{"input": instance[0], "output": instance[1]}] if instance else []
        out = self.output_row(row, completions[0], 0, metadata=encode_metadata(meta), **changes)
        if instance is None:  # the answer stays in metadata, to see why
            out["reject_reason"] = "no_instance"
            out["metadata"] = encode_metadata({**meta, "answer": text[:1000]})
        return [out]

    def _candidates(self, row: dict, completions: list[Completion]) -> list[dict]:
        """The new tasks in a proposal's answers, one row each (``no_task`` when an answer has none)."""
        meta = decode_metadata(row["metadata"])
        rows = []
        for i, c in enumerate(completions):
            tasks = parse_tasks(c.text)
            for j, task in enumerate(tasks or [""]):
                m = {"method": "self_instruct", "round": meta["round"], "examples": meta["examples"]}
                out = self.output_row(
                    row,
                    c,
                    i,
                    id=f"{row['id']}-{i}-{j}",
                    instruction=task,
                    input="",
                    output=None,
                    source=f"self_instruct/{self.model_name()}",
                    metadata=encode_metadata(m),
                )
                if not task:
                    out["reject_reason"] = "no_task"
                rows.append(out)
        return rows

    # -- on the driver
    def drive(self, passes: Passes) -> None:
        c = self.config
        seeds = passes.input_rows(["id", "instruction"]).to_pylist()
        index, index_ids = NoveltyIndex(), []
        for seed in seeds:
            index.add(index.tokenize(seed["instruction"]))
            index_ids.append(seed["id"])
        accepted_uri = passes.work(ACCEPTED)
        done = {r["file"] for r in commit_records(accepted_uri)}
        machine: list[dict] = []
        for r in range(1, c.rounds + 1):
            name = f"round-{r}.parquet"
            if name in done:  # resumed: this round's tasks join the pool as they were accepted
                kept = storage.read_parquet([storage.join(accepted_uri, name)], columns=["id", "instruction"])
                for row in kept.to_pylist():
                    index.add(index.tokenize(row["instruction"]))
                    index_ids.append(row["id"])
                    machine.append(row)
                continue
            remaining = c.target_tasks - len(machine)
            if remaining <= 0:
                break
            prompts = self._round_prompts(r, seeds, machine, remaining)
            prompts_uri = passes.work(f"round-{r}", "prompts")
            commit_part(prompts_uri, "part-0.parquet", pa.Table.from_pylist(prompts, schema=POOL_SCHEMA))
            candidates = storage.read_parquet(
                part_files(passes.generate(prompts_uri, passes.work(f"round-{r}"), f"round {r}", step=PROPOSE))
            )
            kept, dropped = self._filter(candidates.sort_by("id"), index, index_ids, remaining)
            passes.commit(f"round-{r}-rejected.parquet", dropped)  # first: the round is done
            commit_part(accepted_uri, name, kept.select(list(POOL_COLUMNS)))  # once this is committed
            machine += kept.select(["id", "instruction"]).to_pylist()
        self._finish(passes, accepted_uri)

    def _round_prompts(self, r: int, seeds: list[dict], machine: list[dict], remaining: int) -> list[dict]:
        """The round's prompt rows: in-context examples sampled per prompt (machine tasks of
        earlier rounds where there are enough, seed tasks for the rest), the prompt as instruction."""
        c = self.config
        n = self.options.sampling.n
        rounds_left = c.rounds - r + 1
        count = c.prompts_per_round or math.ceil(2 * remaining / (rounds_left * c.tasks_per_prompt * n))
        rng = random.Random(f"{self.options.sampling.seed}:self_instruct:{r}")
        template = c.template or packaged_template("self_instruct")
        rows = []
        for k in range(count):
            from_machine = rng.sample(machine, min(c.machine_examples, len(machine)))
            human = c.human_examples + c.machine_examples - len(from_machine)
            examples = rng.sample(seeds, min(human, len(seeds))) + from_machine
            rng.shuffle(examples)
            listed = "\n".join(f"{i + 1}. {e['instruction']}" for i, e in enumerate(examples))
            meta = {"round": r, "examples": [e["id"] for e in examples]}
            rows.append(
                {
                    "id": f"self_instruct-r{r}-p{k}",
                    "instruction": template.format(examples=listed, n=c.tasks_per_prompt),
                    "input": "",
                    "output": None,
                    "messages": None,
                    "source": "self_instruct",
                    "metadata": encode_metadata(meta),
                    "tools": None,
                }
            )
        return rows

    def _filter(
        self, candidates: pa.Table, index: NoveltyIndex, index_ids: list[str], remaining: int
    ) -> tuple[pa.Table, pa.Table]:
        """(accepted, rejected) candidates; accepted ones join the novelty index in order."""
        c = self.config
        rows, accepted = candidates.to_pylist(), []
        for row in rows:
            meta = decode_metadata(row["metadata"])
            tokens = index.tokenize(row["instruction"])
            best, doc = index.nearest(tokens, 0.0)
            meta.update(rouge_l=round(best, 4), most_similar=index_ids[doc] if doc is not None else None)
            row["metadata"] = encode_metadata(meta)
            if row["reject_reason"]:
                continue
            reason = task_problem(
                row["instruction"], min_words=c.min_words, max_words=c.max_words, blacklist=tuple(c.keyword_blacklist)
            )
            if reason is None and best >= c.rouge_l_max:
                reason = "too_similar"
            if reason is None and len(accepted) >= remaining:
                reason = "over_target"
            if reason is None:
                accepted.append(row["id"])
                index.add(tokens)
                index_ids.append(row["id"])
            row["reject_reason"] = reason
        table = pa.Table.from_pylist(rows, schema=candidates.schema)
        is_kept = pc.is_in(table["id"], value_set=pa.array(accepted, pa.string()))
        return table.filter(is_kept), table.filter(pc.invert(is_kept))

    def _finish(self, passes: Passes, accepted_uri: str) -> None:
        """Classification and instances for every accepted task, into the stage's rows."""
        if not commit_records(accepted_uri):
            return
        if not self.config.instances:
            for record in commit_records(accepted_uri):
                table = storage.read_parquet([storage.join(accepted_uri, record["file"])])
                passes.commit(f"accepted-{record['file']}", _as_output(table))
            return
        from instructscale.backends.base import SamplingConfig

        greedy = SamplingConfig(
            n=1, temperature=0.0, max_tokens=self.options.sampling.max_tokens, seed=self.options.sampling.seed
        )
        classified = passes.generate(accepted_uri, passes.work(CLASSIFY), "classify", CLASSIFY, greedy)
        passes.generate(classified, passes.out_dir, "instances", INSTANCE, greedy)


def _as_output(table: pa.Table) -> pa.Table:
    """Accepted pool rows as output rows (no instance pass): their own parent, no teacher columns."""
    from instructscale.generate.stage import GEN_SCHEMA

    rows = [{**r, "parent_id": r["id"], "sample_idx": 0} for r in table.to_pylist()]
    return pa.Table.from_pylist(rows, schema=GEN_SCHEMA)
