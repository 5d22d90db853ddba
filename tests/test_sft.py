import json

import numpy as np
import pytest
import torch

from dsctl.errors import UserError
from dsctl.pipeline.testing import run_stage
from dsctl.tasks.config import task_problems
from dsctl.train.batches import PackedExamples
from dsctl.train.examples import RowStats, encode_conversations, read_conversations, task_conversations
from stages import sft
from tests.sft_support import EASY, FAMILIES, fail_once_at_step, make_checkpoint, make_tokenizer, tiny_train_config


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    make_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from dsctl.tokenizer import Tokenizer

    return Tokenizer.load(tok_dir)


def test_labels_are_ignored_exactly_off_the_assistant_tokens(tokenizer):
    convs = task_conversations(task_problems(FAMILIES, "worked", 9, seed=0, difficulty=EASY))
    convs.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"},
                  {"role": "assistant", "content": "<think>2 + 2 = 4.</think><answer>4</answer>"},
                  {"role": "user", "content": "And 3 + 3?"},
                  {"role": "assistant", "content": "<think>3 + 3 = 6.</think><answer>6</answer>"}])
    examples, dropped = encode_conversations(tokenizer, convs, seq_len=256)
    assert dropped == 0
    packed = PackedExamples(examples, seq_len=256, batch_size=4, pad_id=tokenizer.pad_id, seed=0)
    expected = sorted(m["content"] for c in convs for m in c if m["role"] == "assistant")
    learned, n_docs = [], 0
    for r in range(len(packed._rows(0))):
        ids, labels, docs = packed.row(r)
        assert np.all(labels[ids == tokenizer.pad_id] == -100)  # padding is never learned
        keep = labels != -100
        assert np.array_equal(labels[keep], ids[keep])  # learned labels are the tokens themselves
        for d in np.unique(docs[ids != tokenizer.pad_id]):
            n_docs += 1
            doc_labels = labels[docs == d]
            learned_ids = [int(t) for t in doc_labels[doc_labels != -100]]
            # every assistant turn ends with a learned eos: split the learned tokens there
            assert learned_ids[-1] == tokenizer.eos_id
            turn: list[int] = []
            for t in learned_ids:
                if t == tokenizer.eos_id:
                    learned.append(tokenizer.decode(turn))
                    turn = []
                else:
                    turn.append(t)
    assert n_docs == len(convs)
    assert sorted(learned) == expected


def test_too_long_conversations_are_dropped_not_cut(tokenizer):
    long = [{"role": "user", "content": "x " * 200}, {"role": "assistant", "content": "<answer>1</answer>"}]
    short = task_conversations(task_problems(["arithmetic"], "worked", 2, seed=0, difficulty=EASY))
    examples, dropped = encode_conversations(tokenizer, [long, *short], seq_len=128)
    assert dropped == 1 and len(examples) == 2


def test_malformed_jsonl_rows_are_counted_not_fatal(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [
        json.dumps({"prompt": "What is 1 + 1?", "response": "<think>1 + 1 = 2</think><answer>2</answer>"}),
        "{not json",
        json.dumps({"prompt": "no response"}),
        json.dumps([1, 2, 3]),
        json.dumps({"messages": [{"role": "user", "content": "hi"}]}),  # no assistant turn
        json.dumps({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}),
        "",
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
        json.dumps({"prompt": "p", "completion": "c", "correct": False}),
        json.dumps({"prompt": "p", "completion": "c", "correct": True}),
    ]
    path.write_text("\n".join(rows) + "\n")
    path.open("ab").write(b"\xff\xfe garbage\n")
    stats = RowStats()
    convs = read_conversations(path, stats)
    assert stats.rows == 3 and len(convs) == 3
    assert stats.malformed == 6 and stats.rejected_samples == 1
    assert stats.examples[0].startswith(f"{path}:2:")
    assert convs[1][1] == {"role": "assistant", "content": "hello"}


def _first_and_last_loss(artifact):
    records = [json.loads(line) for line in (artifact.path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["lm_loss"] for r in records if "lm_loss" in r]
    return losses[0], losses[-1], records


def test_sft_stage_trains_on_tasks_and_jsonl_and_reports_accuracy(tmp_path, tok_dir):
    ckpt = make_checkpoint(tmp_path / "base", tok_dir)
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"prompt": "Say hi.", "response": "hi"}) + "\n{broken\n")
    config = {**tiny_train_config(max_steps=12, lr=3e-3), "families": FAMILIES, "difficulty": EASY,
              "train_problems": 60, "jsonl": [str(extra)], "eval_problems": 3, "max_new_tokens": 8}
    artifact = run_stage(sft.STAGE, config, {"checkpoint": [ckpt]}, tmp_path / "work")
    m = artifact.metrics
    assert m["task_examples"] == 60 and m["jsonl_examples"] == 1 and m["malformed_rows"] == 1
    assert 0 <= m["eval_accuracy"] <= 1 and "base_eval_accuracy" in m and "eval_accuracy_gain" in m
    assert m["val_loss"] > 0 and m["steps"] == 12
    first, last, _ = _first_and_last_loss(artifact)
    assert last < first - 0.5  # a fresh tiny model learns the answer format quickly
    assert (artifact.path / "model.safetensors").is_file() and (artifact.path / "tokenizer.model").is_file()


def test_sft_resume_after_a_crash_gives_identical_weights(tmp_path, tok_dir, monkeypatch):
    from safetensors.torch import load_file

    ckpt = make_checkpoint(tmp_path / "base", tok_dir)
    config = {**tiny_train_config(max_steps=6, checkpoint_every=3), "families": ["arithmetic"], "difficulty": EASY,
              "train_problems": 30, "eval_problems": 0}
    straight = run_stage(sft.STAGE, config, {"checkpoint": [ckpt]}, tmp_path / "a")

    fail_once_at_step(monkeypatch, 4, lambda: run_stage(sft.STAGE, config, {"checkpoint": [ckpt]}, tmp_path / "b"))
    resumed = run_stage(sft.STAGE, config, {"checkpoint": [ckpt]}, tmp_path / "b")
    a, b = load_file(straight.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sft_without_any_examples_is_a_clear_error(tmp_path, tok_dir):
    ckpt = make_checkpoint(tmp_path / "base", tok_dir)
    with pytest.raises(UserError, match="no usable examples"):
        run_stage(sft.STAGE, {**tiny_train_config(), "train_problems": 0, "eval_problems": 0},
                  {"checkpoint": [ckpt]}, tmp_path / "work")


def test_sft_reads_a_samples_artifact_and_skips_rejected_rows(tmp_path, tok_dir):
    ckpt = make_checkpoint(tmp_path / "base", tok_dir)
    samples = tmp_path / "samples"
    samples.mkdir()
    rows = [{"prompt": "What is 2 + 2?", "completion": "<think>2 + 2 = 4.</think><answer>4</answer>", "correct": True},
            {"prompt": "What is 2 + 3?", "completion": "<think>guess</think><answer>7</answer>", "correct": False},
            {"prompt": "What is 5 + 3?", "completion": "<think>5 + 3 = 8.</think><answer>8</answer>", "correct": True}]
    (samples / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {**tiny_train_config(max_steps=2), "train_problems": 0, "eval_problems": 0}
    art = run_stage(sft.STAGE, config, {"checkpoint": [ckpt], "data": [samples]}, tmp_path / "work")
    assert art.metrics["artifact_examples"] == 2 and art.metrics["rejected_sample_rows"] == 1
    assert art.metrics["task_examples"] == 0
