"""Write dsctl's built-in arithmetic problems as a problem set in GSM8K's layout.

    python examples/arithmetic_gsm8k.py data/arith_gsm8k
    dsctl problems --set 'paths=["data/arith_gsm8k"]' --set 'answer_pattern=#### (.+)' --set solution_field=answer

train.jsonl, validation.jsonl and test.jsonl hold {"question", "answer"} rows whose answer
is the worked solution, then `#### N`: the shape of openai/gsm8k, so the file exercises
the path a real dataset takes. Read back as a problem set, it gives grpo and eval the
same numbers as the built-in family (tests/test_problems.py checks it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsctl.tasks.config import held_out_problems, task_problems


def write_gsm8k_layout(out: Path, train: int = 4000, held_out: int = 400, seed: int = 0,
                       difficulty: dict | None = None,
                       train_splits: tuple[str, ...] = ("worked", "answer_only")) -> dict[str, int]:
    """`train` problems of each of `train_splits` (seed `seed`) as train.jsonl, `held_out`
    dev problems as validation.jsonl and `held_out` test problems as test.jsonl."""
    difficulty = {"arithmetic": difficulty} if difficulty else None
    splits = {
        "train": [p for split in train_splits for p in task_problems(["arithmetic"], split, train, seed, difficulty)],
        "validation": held_out_problems(["arithmetic"], "dev", held_out, difficulty),
        "test": held_out_problems(["arithmetic"], "test", held_out, difficulty),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, problems in splits.items():
        with open(out / f"{name}.jsonl", "w") as fh:
            for p in problems:
                fh.write(json.dumps({"question": p.prompt, "answer": f"{p.solution}\n#### {p.answer}"}) + "\n")
    return {name: len(problems) for name, problems in splits.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=4000, help="problems of each training split")
    parser.add_argument("--held-out", type=int, default=400, help="dev and test problems each")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_gsm8k_layout(args.out, args.train, args.held_out, args.seed))
