r"""Loaders for local math datasets; each returns ``list[Problem]`` (see :mod:`llm_backend.problems`).

Formats (``format="auto"`` detects one from the keys of the first record; key lookup ignores case):

==========  =====================================================================================
``gsm8k``   ``question``; ``answer`` whose last ``#### N`` line is the final answer (commas dropped).
``math``    ``problem``; ``answer`` if present, else the content of the last ``\boxed{...}`` of
            ``solution`` (nested braces handled).
``aime``    ``problem``; ``answer`` (string or number; integers are normalised, ``"033"`` -> ``"33"``).
``dapo``    DAPO-Math-17k layout: ``prompt`` a chat list whose user message holds the problem inside
            DAPO's instruction template (stripped here: our task adds its own ``\boxed{}``
            instruction); ``reward_model`` a mapping with ``ground_truth``.
==========  =====================================================================================

Files: ``.jsonl`` (one JSON object a line; blank lines are not records), ``.json`` (a list of
objects, or JSON lines) and ``.parquet`` (read with pyarrow; "line" means 1-based row).

A **malformed** record -- not JSON, not an object, or missing a field its format needs -- raises
:class:`DatasetError` naming the file and line. A well-formed record is **skipped** for one of the
reasons in :data:`SKIP_REASONS`; skips are counted in :class:`LoadReport` and
:func:`load_dataset` emits a warning that lists them (never silently).

Splits: every problem gets ``meta["split"]`` from :func:`llm_backend.problems.split_of` on a hash of
its question and answer, so the ``test`` split (evaluation) is a fixed held-out ~20% of the file.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llm_backend.problems import Problem, problem_id, split_of
from llm_backend.rewards import extract_boxed, parse_plain_integer
from testbed.errors import UserError  # the CLI prints these as one "error:" line

__all__ = ["FORMATS", "SKIP_REASONS", "DatasetError", "LoadReport", "detect_format", "load_dataset", "read_dataset"]

FORMATS = ("gsm8k", "math", "aime", "dapo")

SKIP_REASONS = {
    "empty_question": "the question/problem text is empty",
    "no_answer": "no final answer: GSM8K without '#### N', MATH solution without a closed \\boxed{}, "
                 "or an empty answer / ground_truth",
    "duplicate": "same question and answer as an earlier record (DAPO-Math-17k repeats each problem)",
}
"""Reasons a well-formed record is skipped (key -> meaning)."""

# DAPO-Math-17k wraps each problem in this instruction (prefix and suffix of the user message).
_DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
_DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


class DatasetError(UserError, ValueError):
    """A dataset file or record is malformed; the message names the file and line."""


@dataclass
class LoadReport:
    """What a load kept and skipped."""

    path: str
    format: str
    records: int = 0
    """Records read (blank JSONL lines excluded)."""
    kept: int = 0
    skipped: dict[str, list[int]] = field(default_factory=dict)
    """Reason (a key of :data:`SKIP_REASONS`) -> line numbers skipped for it."""

    def skip(self, reason: str, line: int) -> None:
        assert reason in SKIP_REASONS, reason
        self.skipped.setdefault(reason, []).append(line)

    @property
    def num_skipped(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def summary(self) -> str:
        parts = []
        for reason, lines in sorted(self.skipped.items()):
            shown = ", ".join(map(str, lines[:5])) + (", ..." if len(lines) > 5 else "")
            parts.append(f"{len(lines)} {reason} ({SKIP_REASONS[reason]}; lines {shown})")
        return (f"{self.path}: {self.format}: kept {self.kept} of {self.records} records; "
                f"skipped {self.num_skipped}" + (": " + "; ".join(parts) if parts else ""))


# ---------------------------------------------------------------------------------------------
# reading records


def _iter_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) pairs; malformed JSON raises naming the line."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=4096):
            for rec in batch.to_pylist():
                row += 1
                yield row, rec
        return
    if suffix not in (".jsonl", ".json", ".ndjson"):
        raise DatasetError(f"{path}: unsupported file type {suffix!r}; expected .jsonl, .json or .parquet")
    with path.open(encoding="utf-8") as f:
        first = f.read(1)
        while first and first.isspace():
            first = f.read(1)
        f.seek(0)
        if first == "[":  # a JSON array of records
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
            yield from enumerate(data, start=1)
            return
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None


def _lower_keys(rec: Any, path: Path, line: int) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise DatasetError(f"{path}:{line}: expected a JSON object, got {type(rec).__name__}")
    return {str(k).lower(): v for k, v in rec.items()}


def detect_format(record: dict[str, Any]) -> str | None:
    """The format whose keys ``record`` has (``None`` if none fits).

    >>> detect_format({"question": "q", "answer": "#### 1"}), detect_format({"Problem": "p", "Answer": 3})
    ('gsm8k', 'aime')
    """
    keys = {str(k).lower() for k in record}
    if {"prompt", "reward_model"} <= keys:
        return "dapo"
    if {"question", "answer"} <= keys:
        return "gsm8k"
    if {"problem", "solution"} <= keys:
        return "math"
    if {"problem", "answer"} <= keys:
        return "aime"
    return None


def _need(rec: dict[str, Any], key: str, fmt: str, path: Path, line: int) -> Any:
    if key not in rec or rec[key] is None:
        raise DatasetError(f"{path}:{line}: {fmt} record has no {key!r} field (keys: {', '.join(rec)})")
    return rec[key]


def _text(value: Any, key: str, path: Path, line: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DatasetError(f"{path}:{line}: field {key!r} should be text, got {type(value).__name__}")
    return str(value).strip()


def _normalise_answer(answer: str) -> str:
    """Integers lose leading zeros, sign '+' and thousands separators; other answers are kept."""
    value = parse_plain_integer(answer)
    return str(value) if value is not None else answer


def _extract(fmt: str, rec: dict[str, Any], path: Path, line: int) -> tuple[str, str | None]:
    """(question, answer or None when there is no final answer) of one record."""
    if fmt == "gsm8k":
        question = _text(_need(rec, "question", fmt, path, line), "question", path, line)
        raw = _text(_need(rec, "answer", fmt, path, line), "answer", path, line)
        if "####" not in raw:
            return question, None
        final = raw.rsplit("####", 1)[1].strip()
        return question, final.replace("$", "").rstrip(".").strip() or None
    if fmt == "math":
        question = _text(_need(rec, "problem", fmt, path, line), "problem", path, line)
        if rec.get("answer") not in (None, ""):
            return question, _text(rec["answer"], "answer", path, line)
        solution = _text(_need(rec, "solution", fmt, path, line), "solution", path, line)
        return question, extract_boxed(solution)
    if fmt == "aime":
        question = _text(_need(rec, "problem", fmt, path, line), "problem", path, line)
        return question, _text(_need(rec, "answer", fmt, path, line), "answer", path, line)
    if fmt == "dapo":
        prompt = _need(rec, "prompt", fmt, path, line)
        if isinstance(prompt, str):
            content = prompt
        elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
            users = [m for m in prompt if m.get("role", "user") == "user"]
            if not users or "content" not in users[-1]:
                raise DatasetError(f"{path}:{line}: dapo 'prompt' has no user message with 'content'")
            content = _text(users[-1]["content"], "prompt.content", path, line)
        else:
            raise DatasetError(f"{path}:{line}: dapo 'prompt' should be a list of chat messages")
        question = content.removeprefix(_DAPO_PREFIX).removesuffix(_DAPO_SUFFIX).strip()
        rm = _need(rec, "reward_model", fmt, path, line)
        if not isinstance(rm, dict) or "ground_truth" not in rm:
            raise DatasetError(f"{path}:{line}: dapo 'reward_model' should be a mapping with 'ground_truth'")
        truth = rm["ground_truth"]
        if isinstance(truth, list):  # verl-style list of acceptable answers: the first is canonical
            truth = truth[0] if truth else None
        return question, None if truth is None else _text(truth, "reward_model.ground_truth", path, line)
    raise ValueError(f"unknown dataset format {fmt!r}; valid: auto, {', '.join(FORMATS)}")


def read_dataset(path: str | Path, format: str = "auto") -> tuple[list[Problem], LoadReport]:
    """Load ``path`` as ``format`` (or detect it); returns the problems and a :class:`LoadReport`."""
    path = Path(path)
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; valid: auto, {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such dataset file")
    fmt = None if format == "auto" else format
    report = LoadReport(str(path), fmt or "auto")
    problems: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for line, raw in _iter_records(path):
        rec = _lower_keys(raw, path, line)
        if fmt is None:
            fmt = detect_format(rec)
            if fmt is None:
                raise DatasetError(
                    f"{path}:{line}: cannot detect the dataset format from keys {sorted(rec)}; expected "
                    "question+answer (gsm8k), problem+solution (math), problem+answer (aime) or "
                    "prompt+reward_model (dapo)"
                )
            report.format = fmt
        report.records += 1
        question, answer = _extract(fmt, rec, path, line)
        if not question:
            report.skip("empty_question", line)
            continue
        if not answer:
            report.skip("no_answer", line)
            continue
        answer = _normalise_answer(answer)
        if (question, answer) in seen:
            report.skip("duplicate", line)
            continue
        seen.add((question, answer))
        key = f"{question}\x00{answer}"
        meta = {"id": problem_id(fmt, key), "format": fmt, "split": split_of(key), "source": str(path),
                "line": line, "integer_answer": parse_plain_integer(answer) is not None}
        problems.append(Problem(question, answer, meta))
    if fmt is None:
        raise DatasetError(f"{path}: no records")
    report.kept = len(problems)
    return problems, report


def load_dataset(path: str | Path, format: str = "auto") -> list[Problem]:
    """Problems of a local dataset file; warns (``UserWarning``) with the counts if any were skipped.

    ``format`` is ``auto``, ``gsm8k``, ``math``, ``aime`` or ``dapo``.
    """
    problems, report = read_dataset(path, format)
    if report.num_skipped:
        warnings.warn(report.summary(), stacklevel=2)
    return problems
