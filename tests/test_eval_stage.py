"""The eval stage end to end on tiny checkpoints, through the real runner and store.

The builders here (a tiny tokenizer, checkpoint and shards) are shared with test_extend_stage.
"""

import json
import random
from pathlib import Path

import pytest
import torch

from dsctl.pipeline.store import Artifact
from dsctl.pipeline.testing import run_stage

FIXTURE_MC = Path(__file__).parent / "fixtures" / "mc_tiny.jsonl"


def tiny_tokenizer(directory: Path):
    from dsctl.tasks import problem_document, split_problems
    from dsctl.tasks.passkey import FILLER, NEEDLE, QUESTION
    from dsctl.tokenizer import Tokenizer

    rng = random.Random(0)
    texts = [FILLER * 3, NEEDLE.format(key="12345") + QUESTION]
    texts += [problem_document(p, rng) for p in split_problems("arithmetic", "worked", 40, 0)]
    return Tokenizer.train(texts, 400, directory, seed=0)


def tiny_checkpoint(directory: Path, tokenizer, seed: int, context: int = 64) -> Path:
    """A random tiny model trained (nominally) at `context` tokens, with its tokenizer."""
    from dsctl.model import DeepSeekV3, ModelConfig
    from dsctl.train.artifacts import export_checkpoint

    torch.manual_seed(seed)
    config = ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_position_embeddings=context,
                                eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.bos_id)
    export_checkpoint(DeepSeekV3(config), directory, tokenizer.directory, None)
    return directory


def tiny_shards(directory: Path, tokenizer) -> Path:
    """Token shards (train + validation) of filler and arithmetic text, tokenizer inside."""
    import shutil

    from dsctl.data.shards import TokenShardWriter, write_index
    from dsctl.tasks import problem_document, split_problems
    from dsctl.tasks.passkey import FILLER

    rng = random.Random(1)
    docs = [FILLER * 2] + [problem_document(p, rng) for p in split_problems("arithmetic", "worked", 30, 1)]
    splits = {}
    for split, rows in (("train", docs[:24]), ("validation", docs[24:])):
        writer = TokenShardWriter(directory, split)
        for i, text in enumerate(rows):
            writer.write(f"{split}-{i}", tokenizer.encode(text))
        splits[split] = writer.close()
    write_index(directory, tokenizer.vocab_size, splits)
    shutil.copytree(tokenizer.directory, directory / "tokenizer")
    return directory


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    tok = tiny_tokenizer(root / "tok")
    return {"tokenizer": tok, "base": tiny_checkpoint(root / "base", tok, seed=0),
            "other": tiny_checkpoint(root / "other", tok, seed=1), "shards": tiny_shards(root / "shards", tok)}


def test_checkpoint_labels_use_the_recipe_stage_name():
    from stages.eval import checkpoint_labels

    def art(label, key, manifest=None):
        return Artifact(Path("/nonexistent"), key, "checkpoint", manifest or {}, label)

    labels = checkpoint_labels([art("mini_r1:sft", "a" * 64), art("mini_r1:grpo", "b" * 64),
                                art("other:sft", "c" * 64), art("", "d" * 64),
                                art(str(Path(__file__).parent), "e" * 64, {"stage": "distill"})])
    assert labels == ["sft@aaaaaaaa", "grpo", "sft@cccccccc", "d" * 12, "distill"]


def test_eval_stage_writes_report_for_every_checkpoint(tiny_world, tmp_path):
    from stages import eval as eval_stage

    config = {"eval_problems": 4, "samples": 2, "pass_ks": [1, 2], "max_new_tokens": 6, "ppl_seq_len": 32,
              "ppl_batches": 1, "passkey_lengths": [80], "passkey_trials": 2, "mc_file": str(FIXTURE_MC), "threads": 1}
    artifact = run_stage(eval_stage.STAGE, config,
                         {"checkpoint": [tiny_world["base"], tiny_world["other"]], "shards": [tiny_world["shards"]]},
                         tmp_path / "work")
    report = json.loads((artifact.path / "report.json").read_text())
    assert list(report["metrics"]) == ["base", "other"]
    expected = {"greedy", "pass@1", "pass@2", "cons@2", "format", "val_loss", "val_ppl", "passkey@80",
                "mc_acc", "mc_acc_norm", "params"}
    for values in report["metrics"].values():
        assert set(values) == expected
        assert all(0.0 <= values[k] <= 1.0 for k in expected - {"val_loss", "val_ppl", "params"})
        assert values["pass@1"] <= values["pass@2"] + 1e-9  # more draws never hurt
        assert values["val_ppl"] > 1.0

    from dsctl.model.hf import load_hf

    assert report["metrics"]["base"]["params"] == load_hf(tiny_world["base"]).num_parameters()[0]
    assert report["settings"]["samples"] == 2 and report["settings"]["checkpoints"]["base"]["key"]
    assert report["details"]["base"]["passkey@80"]["trials"] == 2
    assert (artifact.path / "report.md").read_text().startswith("# eval")
    assert (artifact.path / "report.png").is_file()
    assert "base.pass@1" in artifact.metrics
    # other − base, paired over the same 4 problems, agrees with the two columns
    comparisons = {r["metric"]: r for r in report["comparisons"]}
    assert set(comparisons) == {"greedy", "pass@1"}
    for name, row in comparisons.items():
        assert (row["from"], row["to"], row["problems"]) == ("base", "other", 4)
        delta = report["metrics"]["other"][name] - report["metrics"]["base"][name]
        assert row["difference"] == pytest.approx(delta, abs=2e-4)
        assert len(report["details"]["other"]["task_scores"]) == 4
    markdown = (artifact.path / "report.md").read_text()
    assert "paired SE" in markdown
    first = report["details"]["base"]["task_scores"][0]
    assert f"**{first['prompt']}** (answer {first['answer']})" in markdown  # what each model wrote
    assert first["greedy_text"].replace("\n", " ")[:40] in markdown


def test_eval_compares_the_named_pairs_and_refuses_unknown_labels_before_decoding(tiny_world, tmp_path):
    from dsctl.errors import UserError
    from dsctl.eval.task_accuracy import paired_comparisons
    from stages import eval as eval_stage

    scores = {"a": [{"greedy": 0.0}, {"greedy": 1.0}], "b": [{"greedy": 1.0}, {"greedy": 1.0}],
              "c": [{"greedy": 0.0}, {"greedy": 0.0}]}
    rows = paired_comparisons(scores, names=("greedy",), pairs=[["c", "a"], ["c", "b"]])
    assert [(r["from"], r["to"], r["difference"]) for r in rows] == [("c", "a", 0.5), ("c", "b", 1.0)]
    assert [(r["from"], r["to"]) for r in paired_comparisons(scores, names=("greedy",))] == [("a", "b"), ("b", "c")]
    with pytest.raises(UserError, match="must name two of the checkpoints"):
        run_stage(eval_stage.STAGE, {"eval_problems": 2, "compare": [["base", "grpo"]]},
                  {"checkpoint": [tiny_world["base"], tiny_world["other"]]}, tmp_path / "work")
