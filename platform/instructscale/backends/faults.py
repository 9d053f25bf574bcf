"""One bad row costs one row: fault isolation around a generation engine.

- An exception from the engine on a batch is isolated by bisection: the batch is split in halves
  until the failing rows are found; they get ``engine_error: <type>: <message>`` and the rest is
  answered. After every exception the engine is probed, and rebuilt when it no longer answers.
- An error that is not the row's: when ``give_up_after`` single rows in a row fail with the same
  error, the engine, not a row, is broken; the guard raises a GenerationError naming it instead of
  bisecting on (a systematic error would otherwise cost about two engine calls per row).
- A row that kills the replica's process (segfault, OOM, ``os._exit``) cannot be caught: attempt
  markers on the output's storage survive the process. A batch whose marker shows two attempts is
  run row by row, each row with a marker of its own; a row whose marker shows two attempts is
  rejected as ``engine_crash`` without calling the engine again. Crashes per row are bounded, so a
  poison batch never loops.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from instructscale import storage
from instructscale.backends.base import Completion, Conversation, GenerationError, RowFault

MAX_CRASHES = 2
ROW_FAULT_CODES = {"prompt_too_long", "empty_prompt", "engine_error", "engine_crash"}
Result = list[Completion] | RowFault


def is_row_fault(reason: str | None) -> bool:
    """A reason that says a row could not be served (not a mode's rejection by design)."""
    code = (reason or "").split(":", 1)[0]
    return code in ROW_FAULT_CODES or code.startswith("http_")


def _key(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


class Attempts:
    """Attempt counters kept as small files under ``uri`` (local or object storage)."""

    def __init__(self, uri: str):
        self.uri = uri

    def _file(self, key: str) -> str:
        return storage.join(self.uri, f"{key}.json")

    def count(self, key: str) -> int:
        return (storage.read_json_if_exists(self._file(key)) or {}).get("attempts", 0)

    def begin(self, key: str) -> None:
        storage.write_json(self._file(key), {"attempts": self.count(key) + 1})

    def done(self, key: str) -> None:
        storage.remove(self._file(key))


class FaultGuard:
    """Runs ``call`` (the engine on a list of prompts) so that failures cost only the failing rows."""

    def __init__(
        self,
        call: Callable[[list[Conversation]], list[Result]],
        rebuild: Callable[[], None],
        attempts: Attempts | None = None,
        give_up_after: int = 3,
    ):
        self.call, self.rebuild, self.attempts, self.give_up_after = call, rebuild, attempts, give_up_after
        self._streak: tuple[str, int] = ("", 0)  # the last single-row error and how many rows in a row had it

    def run(self, ids: list[str], prompts: list[Conversation]) -> list[Result]:
        if not prompts:
            return []
        if self.attempts is None:  # no crash bookkeeping: exceptions only
            return self._bisect(prompts)
        batch = _key(ids)
        if self.attempts.count(batch) >= MAX_CRASHES:  # this batch killed the process twice
            return [self._alone(row_id, prompt) for row_id, prompt in zip(ids, prompts)]
        self.attempts.begin(batch)
        results = self._bisect(prompts)
        self.attempts.done(batch)
        return results

    def _alone(self, row_id: str, prompt: Conversation) -> Result:
        key = _key([row_id, "row"])
        if self.attempts.count(key) >= MAX_CRASHES:
            self.attempts.done(key)
            return RowFault(f"engine_crash: the replica's process died {MAX_CRASHES} times on this row")
        self.attempts.begin(key)
        (result,) = self._bisect([prompt])
        self.attempts.done(key)
        return result

    def _bisect(self, prompts: list[Conversation]) -> list[Result]:
        try:
            results = self.call(prompts)
        except GenerationError:
            raise  # the endpoint or the model as a whole: no row would succeed
        except Exception as err:
            if len(prompts) == 1:
                return [self._row_error(f"{type(err).__name__}: {str(err)[:300]}")]
            self.rebuild()
            mid = len(prompts) // 2
            return self._bisect(prompts[:mid]) + self._bisect(prompts[mid:])
        self._streak = ("", 0)
        return results

    def _row_error(self, error: str) -> RowFault:
        """One row's error; the same error on ``give_up_after`` rows in a row stops the guard."""
        last, count = self._streak
        self._streak = (error, count + 1 if error == last else 1)
        if self._streak[1] >= self.give_up_after:
            raise GenerationError(
                f"generate: the engine failed {self._streak[1]} rows in a row, each alone, with the same error: "
                f"{error}. This is the engine or its settings, not the rows (max_same_row_errors)"
            )
        self.rebuild()
        return RowFault(f"engine_error: {error}")
