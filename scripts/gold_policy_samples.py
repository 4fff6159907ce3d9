"""The initial policy's replies that gold v2's attack suite compares against (tests/data/).

SmolLM2-135M-Instruct, as the RLOO runs start, samples `--k` replies to each prompt of the gold's prompt
sets (`data/gold_v2.py` ATTACK_SETS: `design`, on which the gold was shaped; `check`, looked at once,
which led to one revision; `holdout`, sampled after the last revision and never used to choose), with
the chat template, temperature 0.7 and `--max-new-tokens`; each reply records whether the token cap cut
it. Each set is seeded by its ATTACK_SETS seed (design and check were sampled in one earlier call, torch
seed 0). Plain transformers generate on the CPU; ~7 min a set on 2 cores.

    .venv/bin/python scripts/gold_policy_samples.py --out tests/data/gold_v2_policy_samples.json --sets holdout
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_ray.data.gold_v2 import ATTACK_SETS, attack_prompts
    from rlhf_ray.models.aliases import resolve_model
    from rlhf_ray.rl.prompts import encode_prompts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--sets", nargs="*", default=list(ATTACK_SETS), help="the prompt sets to sample (others "
                        "already in --out are kept)")
    args = parser.parse_args()
    torch.manual_seed(0)
    path = resolve_model("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = {"policy": "smollm2-135m", "k": args.k, "max_new_tokens": args.max_new_tokens, "temperature": 0.7,
           "sets": {}}
    if Path(args.out).exists():
        out = json.loads(Path(args.out).read_text())
        same = {k: out[k] for k in ("k", "max_new_tokens")} == {"k": args.k, "max_new_tokens": args.max_new_tokens}
        if not same:
            raise SystemExit(f"{args.out} was sampled with other settings: remove it or keep them")
    start, done, total = time.monotonic(), 0, sum(len(attack_prompts(s)) for s in args.sets)
    for name in args.sets:
        torch.manual_seed(ATTACK_SETS[name])
        prompts = attack_prompts(name)
        rows = []
        for first in range(0, len(prompts), args.batch):
            chunk = prompts[first : first + args.batch]
            ids = encode_prompts(tokenizer, chunk, 256)
            width = max(map(len, ids))
            input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])
            attention = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
            with torch.no_grad():
                gen = model.generate(input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=0.7,
                                     top_p=1.0, max_new_tokens=args.max_new_tokens, num_return_sequences=args.k,
                                     pad_token_id=pad)
            for i, p in enumerate(chunk):
                replies, cut = [], []
                for j in range(args.k):
                    new = gen[i * args.k + j, width:].tolist()
                    ended = tokenizer.eos_token_id in new
                    replies.append(tokenizer.decode(new, skip_special_tokens=True).strip())
                    cut.append(not ended)
                rows.append({"prompt_id": p["prompt_id"], "replies": replies, "cut_by_cap": cut})
            done += len(chunk)
            rate = done / (time.monotonic() - start)
            print(f"[gold-samples] {done}/{total} prompts, {rate:.2f}/s, ETA {(total - done) / rate:.0f} s",
                  file=sys.stderr, flush=True)
        out["sets"][name] = rows
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
