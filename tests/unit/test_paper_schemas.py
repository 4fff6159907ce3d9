"""The public datasets' schemas (BSR paper's UltraFeedback splits, LongForm) on small local files."""
import json

import pytest

from rlhf_ray.config import load_config
from rlhf_ray.data.collapse import build_collapse
from rlhf_ray.data.loaders import load_split
from rlhf_ray.data.schema import DataError, load_rankings

WORDS = " ".join(f"word{k}" for k in range(120))


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_bsr_paper_val2_to_val4_schema(tmp_path):
    f = write_jsonl(tmp_path / "val2.jsonl", [{
        "instruction": "Explain rain.",
        **{f"response_{k}_text": f"answer {k}" for k in range(1, 5)},
        "all_scores": [0.1, 0.9, 0.5, 0.3],
    }])
    g = load_rankings(f)[0]
    assert g.prompt == "Explain rain." and g.completions == ["answer 2", "answer 3", "answer 4", "answer 1"]
    assert g.scores == [0.9, 0.5, 0.3, 0.1]


def test_bsr_paper_train_schema_chat_messages(tmp_path):
    f = write_jsonl(tmp_path / "train.jsonl", [{
        "chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Go away."}],
    }])
    g = load_rankings(f)[0]
    assert (g.prompt, g.completions) == ("Hi?", ["Hello!", "Go away."])


def test_scenarios_config_reads_the_four_files(tmp_path):
    responses = {f"response_{k}_text": f"a{k}" for k in range(1, 5)}
    rows = [{"instruction": f"q{i}", **responses, "all_scores": [1, 2, 3, 4]} for i in range(3)]
    for split in ("val2", "val3", "val4"):
        write_jsonl(tmp_path / f"{split}.jsonl", rows)
    cfg = load_config(None, ["data.testbed=custom", f"data.eval={tmp_path / 'val3.jsonl'}"])
    assert len(load_split(cfg, "eval")) == 3
    cfg = load_config(None, ["data.testbed=custom", "data.eval=not-a-file"])
    with pytest.raises(DataError, match="data.eval"):
        load_split(cfg, "eval")


def test_longform_schema_builds_the_collapse_testbed(tmp_path):
    src = write_jsonl(tmp_path / "longform.jsonl", [
        {"input": f"Write about topic {i}.", "output": WORDS} for i in range(10)
    ] + [{"input": "too short", "output": "few words"}])
    build_collapse(tmp_path / "tb", 6, 2, seed=0, source=str(src))
    groups = load_rankings(tmp_path / "tb" / "collapse" / "train.parquet")
    assert len(groups) == 6 and all(g.prompt.startswith("Write about topic") for g in groups)
    assert all(len(g.completions[0].split()) in (80, 74) for g in groups)
