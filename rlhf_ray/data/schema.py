"""One row format for every reward-model dataset, and loaders that validate each row.

A row is a *ranking*: one prompt and its completions listed best first.

| column        | type            | meaning                                                         |
|---------------|-----------------|-----------------------------------------------------------------|
| prompt_id     | str             | stable id of the prompt (testbeds: `<testbed>-<n>`)             |
| prompt        | str             | the prompt text                                                 |
| prompt_type   | str             | `open` or `closed` (picks the utility in prompt-aware training) |
| completions   | list[str]       | >= 2 responses, best first                                      |
| scores        | list[float]     | optional: the score that ranked them (gold reward, word count)  |
| generators    | list[str]       | optional: which response generator wrote each completion        |

Pair data (prompt, chosen, rejected) is read as completions = [chosen, rejected]; ranked data may
also come as `completions` best first with an optional `prompt_type` (default `open`).
Any bad row raises DataError naming the file, the row and the field. One numbering rule everywhere:
`row N` counts records from 0 (blank lines are not records); in a JSONL file `(line M)` follows, the
line an editor shows (from 1), so a file with blank lines is still easy to read.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

PROMPT_TYPES = ("open", "closed")


class DataError(ValueError):
    """A data file or row is malformed; the message names the file, row and field."""


@dataclass
class Ranking:
    prompt_id: str
    prompt: str
    prompt_type: str
    completions: list[str]
    scores: list[float] = field(default_factory=list)
    generators: list[str] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.prompt_type == "open"


# default per-row size limit (data.max_row_mb): a larger row is an error, not a silent 10 GB peak
MAX_ROW_MB = 1.0


def where(row: int, line: int | None = None) -> str:
    """`row 7`, or `row 7 (line 9)` for a line-based file: the one way rows are numbered."""
    return f"row {row}" if line is None else f"row {row} (line {line})"


def _bad(source: str, row: int, field_name: str, why: str, line: int | None = None) -> DataError:
    return DataError(f"{source}: {where(row, line)}: field '{field_name}': {why}")


def validate_row(raw: dict, source: str, row: int, line: int | None = None) -> Ranking:
    """Turn one raw record (pair or ranked form) into a validated Ranking."""
    def bad(field_name: str, why: str) -> DataError:
        return _bad(source, row, field_name, why, line)

    def text(value, name: str) -> str:
        if not isinstance(value, str):
            raise bad(name, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise bad(name, "is empty")
        return value

    if not isinstance(raw, dict):
        raise DataError(f"{source}: {where(row, line)}: expected an object, got {type(raw).__name__}")
    prompt = text(raw.get("prompt"), "prompt")
    if "completions" in raw and raw["completions"] is not None:
        completions = raw["completions"]
        if not isinstance(completions, (list, tuple)):
            raise bad("completions", "expected a list of strings")
        if len(completions) < 2:
            raise bad("completions", f"needs at least 2 completions, got {len(completions)}")
        completions = [text(c, f"completions[{k}]") for k, c in enumerate(completions)]
    elif "chosen" in raw or "rejected" in raw:
        completions = [
            text(raw.get("chosen"), "chosen"),
            text(raw.get("rejected"), "rejected"),
        ]
    else:
        raise bad("completions", "missing: give 'completions' or 'chosen' and 'rejected'")
    prompt_type = raw.get("prompt_type") or "open"
    if prompt_type not in PROMPT_TYPES:
        raise bad("prompt_type", f"must be one of {PROMPT_TYPES}, got {prompt_type!r}")
    scores = list(raw.get("scores") or [])
    if scores:
        if len(scores) != len(completions):
            raise bad("scores", f"has {len(scores)} values for {len(completions)} completions")
        for k, s in enumerate(scores):
            if not isinstance(s, (int, float)) or not math.isfinite(s):
                raise bad(f"scores[{k}]", f"must be a finite number, got {s!r}")
        scores = [float(s) for s in scores]
    generators = [str(g) for g in (raw.get("generators") or [])]
    if generators and len(generators) != len(completions):
        raise bad("generators", "must name one generator per completion")
    prompt_id = str(raw.get("prompt_id") or f"{Path(source).stem}-{row}")
    return Ranking(prompt_id, prompt, prompt_type, completions, scores, generators)


def _text_bytes(value) -> int:
    """About the bytes a parquet record holds: its strings' UTF-8 lengths (numbers count 8)."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, dict):
        return sum(_text_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_text_bytes(v) for v in value)
    return 8


def _too_large(path: Path, row: int, line: int | None, size: int, max_row_mb: float) -> DataError:
    return DataError(f"{path}: {where(row, line)}: {size / 2**20:.1f} MB is larger than the {max_row_mb:g} MB "
                     f"limit per row (config key data.max_row_mb)")


def read_records(path: Path,
                 max_row_mb: float = MAX_ROW_MB) -> Iterator[tuple[int, int | None, dict]]:
    """(row, line, record) of a parquet or JSONL file; `line` is None for parquet. Every record is
    checked for its size and a JSONL line for UTF-8 and JSON before it is parsed, naming the row."""
    limit = int(max_row_mb * 2**20)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise DataError(f"{path}: a folder, not a data file (name a .parquet or .jsonl file)")
    if path.exists() and not os.access(path, os.R_OK):
        raise DataError(f"{path}: cannot be read (permission denied)")
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            row = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
                for record in batch.to_pylist():
                    if _text_bytes(record) > limit:
                        raise _too_large(path, row, None, _text_bytes(record), max_row_mb)
                    yield row, None, record
                    row += 1
        except UnicodeDecodeError:
            raise DataError(f"{path}: {where(row)}: a string that is not UTF-8 text") from None
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable parquet file ({err})") from None
    elif suffix in (".jsonl", ".json"):
        row = 0
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if len(raw) > limit:
                    raise _too_large(path, row, line_no, len(raw), max_row_mb)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}: {where(row, line_no)}: not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                                    f"column {err.start + 1}); save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: {where(row, line_no)}: not valid JSON ({err.msg})") from None
                yield row, line_no, record
                row += 1
    else:
        raise DataError(f"{path}: unsupported data file type {suffix!r} (use .parquet or .jsonl)")


def load_rankings(path: str | Path, limit: int | None = None,
                max_row_mb: float = MAX_ROW_MB) -> list[Ranking]:
    """Read and validate a local parquet/jsonl file of pair or ranked rows."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    rankings = []
    for row, line, raw in read_records(path, max_row_mb):
        rankings.append(validate_row(normalise_known_schemas(raw), str(path), row, line))
        if limit is not None and len(rankings) >= limit:
            break
    if not rankings:
        raise DataError(f"{path}: holds no rows")
    return rankings


def load_hub_dataset(name: str, split: str, limit: int | None = None) -> list[Ranking]:
    """A hub dataset of the same schema (e.g. rm-robustness/ultrafeedback-train), via `datasets`.

    Known public schemas are mapped onto ours (`normalise_known_schemas`).
    """
    import datasets

    ds = datasets.load_dataset(name, split=split)
    rankings = []
    for row, raw in enumerate(ds):
        rankings.append(validate_row(normalise_known_schemas(raw), f"{name}[{split}]", row))
        if limit is not None and len(rankings) >= limit:
            break
    return rankings


def normalise_known_schemas(raw: dict) -> dict:
    """Map the public schemas we read onto ours; plain rows pass through unchanged.

    - chat-message columns (TRL / the BSR paper's train and Val1 splits): `chosen` / `rejected` are
      lists of {role, content}; the prompt is the user turns, a response the last assistant turn;
    - the BSR paper's Val2-4 splits: `instruction`, `response_1_text` .. `response_4_text` and
      `all_scores` (gold ArmoRM scores): completions sorted best first by those scores.
    """
    if not isinstance(raw, dict):
        return raw
    out = dict(raw)
    if "instruction" in out and "response_1_text" in out:
        k = 1
        responses = []
        while f"response_{k}_text" in out:
            responses.append(out[f"response_{k}_text"])
            k += 1
        scores = out.get("all_scores")
        scores = list(scores) if isinstance(scores, (list, tuple)) else []
        numeric = len(scores) == len(responses) and all(
            isinstance(x, (int, float)) and not isinstance(x,
                                                           bool) and math.isfinite(x) for x in scores)
        # sort best first only when every score is a number; otherwise validate_row names the bad
        # one
        order = sorted(range(len(responses)),
                       key=lambda i: -scores[i]) if numeric else range(len(responses))
        out = {
            "prompt": out["instruction"],
            "completions": [responses[i] for i in order],
            "scores": [scores[i] for i in order] if len(scores) == len(responses) else None,
            "prompt_type": out.get("prompt_type"),
            "prompt_id": out.get("prompt_id"),
        }
        return out

    def is_messages(value) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)

    # non-text contents are dropped; validation sees the rest
    def contents(messages, role=None) -> list[str]:
        return [m["content"] for m in messages
                if isinstance(m.get("content"), str) and (role is None or m.get("role") == role)]

    for key in ("chosen", "rejected"):
        if is_messages(out.get(key)):
            if not out.get("prompt"):
                out["prompt"] = "\n".join(contents(out[key], "user"))
            replies = contents(out[key], "assistant")
            out[key] = replies[-1] if replies else ""
    if is_messages(out.get("prompt")):
        out["prompt"] = "\n".join(contents(out["prompt"]))
    return out


def write_rankings(rankings: list[Ranking], path: str | Path) -> None:
    """Write rankings as parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlhf_ray.utils.atomic import atomic_write_bytes

    table = pa.Table.from_pylist([asdict(g) for g in rankings])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
