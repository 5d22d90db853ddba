import json
import math

import numpy as np
import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig
from dsctl.pipeline.stage import StageContext, StageSpec
from dsctl.progress import Reporter
from dsctl.train.batches import PackedExamples, PackedTokens
from dsctl.train.config import LMTrainConfig
from dsctl.train.loop import LMTrainer
from dsctl.train.optim import lr_at

SPEC = StageSpec("t", 1, LMTrainConfig, lambda ctx: None, "checkpoint")


def _ctx(tmp_path, name="run"):
    out, scratch = tmp_path / name / "artifact", tmp_path / name / "scratch"
    out.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    return StageContext(SPEC, None, 0, {}, out, scratch, Reporter(quiet=True), name, "k")


def _docs(n=60, seed=0, vocab=64):
    rng = np.random.default_rng(seed)
    # learnable structure: each doc counts upward from a random start
    return [((rng.integers(1, vocab) + np.arange(rng.integers(5, 40))) % vocab).astype(np.int32) for _ in range(n)]


def _cfg(**kw):
    base = dict(max_steps=12, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2, checkpoint_every=4,
                eval_every=0, eval_batches=2, device="cpu", precision="fp32")
    return LMTrainConfig(**{**base, **kw})


def _model(seed=0):
    torch.manual_seed(seed)
    return DeepSeekV3(ModelConfig.preset("tiny", vocab_size=64, num_nextn_predict_layers=1))


def test_schedules():
    cfg = LMTrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(55, cfg) == pytest.approx(0.55, abs=1e-6)  # cosine midpoint
    wsd = LMTrainConfig(max_steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="wsd", decay_fraction=0.2)
    assert lr_at(50, wsd) == 1.0 and lr_at(79, wsd) == 1.0
    assert lr_at(99, wsd) == pytest.approx(0.1) and 0.1 < lr_at(90, wsd) < 1.0


def test_packed_tokens_are_a_pure_function_of_step_and_cover_each_epoch_once():
    docs = _docs()
    a = PackedTokens(docs, 32, 4, eos_id=0, seed=3)
    b = PackedTokens(docs, 32, 4, eos_id=0, seed=3)
    assert torch.equal(a.batch(7)["input_ids"], b.batch(7)["input_ids"])
    epoch = np.concatenate([a.window(i)[0] for i in range(a.windows_per_epoch)])
    assert len(epoch) == a.tokens_per_epoch
    assert np.count_nonzero(epoch == 0) >= len(docs) - 1  # one eos per document (last may be cut)
    second = np.concatenate([a.window(a.windows_per_epoch + i)[0] for i in range(a.windows_per_epoch)])
    assert not np.array_equal(epoch, second)  # a fresh order each epoch
    doc_ids = a.batch(0)["doc_ids"]
    assert (doc_ids[:, 0] == 0).all() and (doc_ids.diff(dim=1) >= 0).all()


def test_packed_examples_mask_labels_exactly_on_unlearned_tokens():
    examples = [([1, 2, 3, 4, 5], [0, 0, 1, 1, 1]), ([6, 7, 8], [0, 1, 1]), ([9, 10, 11, 12], [1, 0, 0, 1])]
    packed = PackedExamples(examples, seq_len=8, batch_size=3, pad_id=0, seed=0, shuffle=False)
    batch = packed.batch(0)
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        for token, label in zip(ids, labels):
            learned = any(token == t and m for ex, mask in examples for t, m in zip(ex, mask))
            assert label == (token if learned else -100)
    assert batch["input_ids"][0].tolist()[:8] == [1, 2, 3, 4, 5, 6, 7, 8]  # first fit packs two examples
    assert batch["doc_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]


def test_training_lowers_loss(tmp_path):
    ctx = _ctx(tmp_path)
    docs = _docs()
    val = PackedTokens(_docs(seed=1), 32, 4, eos_id=0, seed=0, shuffle=False)
    trainer = LMTrainer(_model(), PackedTokens(docs, 32, 4, eos_id=0, seed=0), _cfg(max_steps=40, eval_every=20),
                      ctx, val_batches=val)
    before = trainer.validation_loss()
    summary = trainer.fit()
    assert summary["val_loss"] < before - 0.5, (before, summary)
    records = [json.loads(line) for line in ctx.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 41))
    assert {"loss", "lm_loss", "mtp_loss", "lr", "grad_norm", "tokens_per_s", "max_load_violation"} <= set(records[0])


def test_resume_is_bit_identical(tmp_path):
    docs = _docs()
    full = LMTrainer(_model(), PackedTokens(docs, 32, 4, 0, seed=0), _cfg(max_steps=12), _ctx(tmp_path, "full"))
    full.fit()
    ctx = _ctx(tmp_path, "split")
    from dsctl.model import compute_loss

    class Killed(Exception):
        pass

    calls = [0]

    def dies_at_step_10(model, batch):
        calls[0] += 1
        if calls[0] == 10:  # mid-run, after the step-8 checkpoint
            raise Killed
        return compute_loss(model, batch["input_ids"], batch["labels"], doc_ids=batch["doc_ids"])

    with pytest.raises(Killed):
        LMTrainer(_model(), PackedTokens(docs, 32, 4, 0, seed=0), _cfg(max_steps=12), ctx,
                  loss_fn=dies_at_step_10).fit()
    # a new process would start from fresh, differently initialized weights: resume must restore all
    resumed = LMTrainer(_model(seed=99), PackedTokens(docs, 32, 4, 0, seed=0), _cfg(max_steps=12), ctx)
    resumed.fit()
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    steps = [json.loads(line)["step"] for line in ctx.metrics_path.read_text().splitlines()]
    assert steps == list(range(1, 13))


def test_nan_loss_is_skipped_and_repeated_bad_steps_roll_back(tmp_path):
    from dsctl.model import compute_loss

    bad_steps = {5, 9, 10, 11}
    calls = {"step": 0}

    def loss_fn(model, batch):
        out = compute_loss(model, batch["input_ids"], batch["labels"])
        if calls["step"] in bad_steps:
            out.loss = out.loss * float("nan")
        calls["step"] += 1
        return out

    ctx = _ctx(tmp_path)
    trainer = LMTrainer(_model(), PackedTokens(_docs(), 32, 4, 0, seed=0), _cfg(max_steps=14, max_bad_steps=3), ctx,
                      loss_fn=loss_fn)
    summary = trainer.fit()
    assert summary["skipped_steps"] == 4 and summary["rollbacks"] == 1
    events = [json.loads(line) for line in ctx.metrics_path.read_text().splitlines() if "event" in line]
    assert [(e["step"], e["event"]) for e in events] == [(6, "skipped"), (10, "skipped"), (11, "skipped"),
                                                         (12, "rollback")]
    assert all(math.isfinite(p.detach().sum()) for p in trainer.model.parameters())


class _PlainIO:
    """Not a StageContext: the training core asks only for these six members."""

    def __init__(self, root):
        self.scratch, self.metrics_path = root / "scratch", root / "metrics.jsonl"
        self.scratch.mkdir(parents=True)
        self.messages = []

    def log(self, **metrics):
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(metrics) + "\n")

    def info(self, message):
        self.messages.append(message)

    def warn(self, message):
        self.messages.append(message)

    def progress(self, total, description="", unit="it", completed=0):
        import contextlib

        class Bar:
            def advance(self, n=1, **fields):
                pass

        return contextlib.nullcontext(Bar())


def test_training_core_runs_on_any_run_io_and_resumes_from_its_scratch(tmp_path):
    io = _PlainIO(tmp_path)
    trainer = LMTrainer(_model(), PackedTokens(_docs(), 32, 4, 0, seed=0), _cfg(max_steps=4), io)
    assert trainer.fit()["steps"] == 4
    assert len(io.metrics_path.read_text().splitlines()) == 4
    again = LMTrainer(_model(seed=5), PackedTokens(_docs(), 32, 4, 0, seed=0), _cfg(max_steps=4), io)
    assert again.fit()["steps"] == 4 and any("resumed from step-0000004" in m for m in io.messages)
    assert all(torch.equal(a, b)
               for a, b in zip(trainer.model.state_dict().values(), again.model.state_dict().values()))


def test_fp8_run_reports_its_fp8_coverage_and_leaves_routing_unsteered(tmp_path):
    trainer = LMTrainer(_model(), PackedTokens(_docs(), 32, 4, 0, seed=0), _cfg(max_steps=2, precision="fp8"),
                        _ctx(tmp_path))
    summary = trainer.fit()
    assert summary["precision"] == "fp8"
    assert 0 < summary["fp8_linear_flop_share"] < 1 and summary["fp8_activation_mb_saved"] > 0
    loads = [m.expert_load for m in trainer.model.moe_layers()]
    assert all(float(load.sum()) == 0 for load in loads)  # the measuring forward left no load counts
