"""Run an exported checkpoint under lm-evaluation-harness on a local multiple-choice file.

A dsctl checkpoint directory is a Hugging Face DeepseekV3 checkpoint with its tokenizer,
so the harness's `hf` model opens it as it is (no remote code). `write_lm_eval_task`
turns our multiple-choice JSONL into a harness task (a YAML beside a normalized copy of
the data), then:

    lm_eval --model hf --model_args pretrained=CKPT_DIR,dtype=float32 \\
        --tasks dsctl_mc --include_path TASK_DIR --device cpu --batch_size 8

(`dsctl export KEY --format hf` gives CKPT_DIR for a store artifact.) The harness scores
exactly as `score_multiple_choice` does, so its acc/acc_norm should equal ours.
"""

from __future__ import annotations

import json
from pathlib import Path

from dsctl.eval.multiple_choice import load_choice_questions

TASK_TEMPLATE = """\
# lm-evaluation-harness task written by dsctl.eval.lm_eval_task for {source}
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_lm_eval_task(jsonl: Path, out_dir: Path, task: str = "dsctl_mc") -> Path:
    """Write `<task>.yaml` and `<task>.jsonl` (answers as indices) into `out_dir`; returns
    the YAML path. Pass `out_dir` to the harness as --include_path."""
    questions = load_choice_questions(Path(jsonl))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / f"{task}.jsonl"
    data.write_text("".join(json.dumps({"question": q.question, "choices": list(q.choices), "answer": q.answer}) + "\n"
                            for q in questions))
    yaml = out_dir / f"{task}.yaml"
    yaml.write_text(TASK_TEMPLATE.format(source=Path(jsonl).name, task=task, data=json.dumps(str(data.resolve()))))
    return yaml
