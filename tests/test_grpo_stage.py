"""The grpo stage end to end on a tiny SFT'd model: it learns from rewards, runs through
the real store, and resumes bit-identically after an interruption."""

import json

import random

import pytest
import torch

from dsctl.model import DeepSeekV3, ModelConfig, compute_loss
from dsctl.progress import Reporter
from dsctl.rl.config import GRPOConfig
from dsctl.rl.trainer import GRPOTrainer
from dsctl.stage import StageContext, StageSpec
from dsctl.tasks import FAMILIES, reasoning_target
from dsctl.testing import run_stage
from dsctl.train.artifacts import export_checkpoint, load_model
from dsctl.train.checkpoint import latest_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# One-digit sums: a 0.5M-parameter model learns the format in seconds but still gets
# some answers wrong when sampling, so groups disagree and GRPO has a signal.
EASY = {"min_digits": 1, "max_digits": 1, "ops": "+"}
SPEC = StageSpec("grpo-test", 1, GRPOConfig, lambda ctx: None, "checkpoint")


def _short_target(p) -> str:
    """A well-formatted answer with a one-word think block: cheap to learn, so the fixture
    is a policy that formats well and is right only part of the time."""
    return f"<think>sum</think><answer>{p.answer}</answer>"


def _sft_tiny(tokenizer, problems, steps: int = 40) -> DeepSeekV3:
    """A few dozen steps of plain supervised training on prompt -> short tagged answer."""
    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, num_nextn_predict_layers=0))
    rows = []
    for p in problems:
        prompt = tokenizer.chat_prompt(p.prompt)
        target = tokenizer.encode(_short_target(p)) + [tokenizer.eos_id]
        rows.append((prompt + target, [-100] * len(prompt) + target))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r + [tokenizer.pad_id] * (width - len(r)) for r, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        pick = torch.arange(step * 16, step * 16 + 16) % len(rows)
        compute_loss(model, ids[pick], labels[pick]).loss.backward()
        opt.step()
        opt.zero_grad()
    return model


@pytest.fixture(scope="module")
def sft_checkpoint(tmp_path_factory):
    from dsctl.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("grpo")
    # 90 of the 100 one-digit sums, whatever their split: the trainer's own tests need a
    # tiny policy that sometimes answers right, not the recipe's splits
    rng, drawn = random.Random("arithmetic:train:0"), {}
    while len(drawn) < 90:
        p = FAMILIES["arithmetic"].generate(rng, **{**FAMILIES["arithmetic"].difficulty, **EASY})
        drawn.setdefault(p.id, p)
    problems = list(drawn.values())
    texts = [p.prompt + "\n" + reasoning_target(p) + _short_target(p) for p in problems]
    tokenizer = Tokenizer.train(iter(texts * 3), 320, root / "tok", seed=0)
    model = _sft_tiny(tokenizer, problems)
    export_checkpoint(model, root / "ckpt", root / "tok", None)
    return root / "ckpt", tokenizer, problems


def _ctx(tmp_path, name: str, seed: int = 0) -> StageContext:
    out, scratch = tmp_path / name / "out", tmp_path / name / "scratch"
    out.mkdir(parents=True)
    scratch.mkdir(parents=True)
    return StageContext(SPEC, None, seed, {}, out, scratch, Reporter(quiet=True), name, "k")


def _cfg(**kw) -> GRPOConfig:
    base = dict(max_steps=4, group_size=4, prompts_per_step=3, max_new_tokens=12, lr=1e-3, kl_coef=0.04,
                update_epochs=2, ref_refresh_every=2, checkpoint_every=2, device="cpu", precision="fp32")
    return GRPOConfig(**{**base, **kw})


class Killed(Exception):
    pass


def test_interrupted_and_resumed_run_gives_bit_identical_weights(sft_checkpoint, tmp_path):
    ckpt, tokenizer, problems = sft_checkpoint
    full = GRPOTrainer(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, _cfg(), _ctx(tmp_path, "full"), seed=0)
    full.fit()
    records = [json.loads(line) for line in full.io.metrics_path.read_text().splitlines()]
    assert any("policy_loss" in r for r in records), "no step had a reward signal: the test would prove nothing"

    class DiesAtStep4(GRPOTrainer):
        def train_step(self, step):
            if step == 3:  # after the step-2 checkpoint and reference refresh; step 3 is lost
                raise Killed
            return super().train_step(step)

    ctx = _ctx(tmp_path, "split")
    with pytest.raises(Killed):
        DiesAtStep4(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, _cfg(), ctx, seed=0).fit()
    torch.manual_seed(123)  # a new process: resume may not rely on leftover global RNG state
    resumed = GRPOTrainer(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, _cfg(), ctx, seed=0)
    resumed.fit()
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(full.reference.state_dict().items(), resumed.reference.state_dict().items()):
        assert torch.equal(a, b), f"reference {name}"
    assert [json.loads(line)["step"] for line in ctx.metrics_path.read_text().splitlines()] == list(range(1, 5))


def test_grpo_raises_training_reward_on_easy_sums(sft_checkpoint, tmp_path):
    ckpt, tokenizer, problems = sft_checkpoint
    cfg = _cfg(max_steps=12, prompts_per_step=4, group_size=6, lr=2e-3, update_epochs=1, ref_refresh_every=0,
               checkpoint_every=100)
    trainer = GRPOTrainer(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, cfg, _ctx(tmp_path, "learn"), seed=0)
    trainer.fit()
    records = [json.loads(line) for line in trainer.io.metrics_path.read_text().splitlines()]
    first = sum(r["reward_mean"] for r in records[:4]) / 4
    last = sum(r["reward_mean"] for r in records[-4:]) / 4
    assert last > first, (first, last)
    for key in ("reward_std", "accuracy", "format_rate", "completion_len", "rollout_tokens_per_s", "lr",
                "groups_solved", "groups_with_signal"):
        assert key in records[0]
    # no format bonus by default: the reward is the share of right answers
    assert all(r["reward_mean"] == r["accuracy"] for r in records)
    from dsctl.plots import panels

    assert panels({"grpo": records})[:3] == ["reward_mean", "accuracy", "groups_solved"]


def test_stage_runs_through_run_stage_and_reports_held_out_accuracy(sft_checkpoint, tmp_path):
    import stages.grpo as grpo

    ckpt, _, _ = sft_checkpoint
    config = {"max_steps": 2, "group_size": 4, "prompts_per_step": 2, "max_new_tokens": 12, "train_problems": 20,
              "eval_problems": 8, "families": ["arithmetic"],
              "difficulty": {"arithmetic": EASY}, "lr": 1e-3}
    artifact = run_stage(grpo.STAGE, config, {"checkpoint": [ckpt]}, tmp_path / "work")
    summary = artifact.metrics
    for key in ("before_accuracy", "after_accuracy", "before_format_rate", "after_format_rate", "steps"):
        assert key in summary
    assert summary["steps"] == 2 and summary["before_problems"] == 8
    assert (artifact.path / "training_state" / "state.json").is_file()
    assert (artifact.path / "tokenizer.model").is_file()
    steps = [json.loads(line) for line in (artifact.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2]
    reloaded = load_model(artifact)
    assert sum(p.numel() for p in reloaded.parameters()) > 0
    assert latest_checkpoint(artifact.path) is None  # scratch checkpoints are not published


def load_model_at(path):
    from dsctl.model.hf import load_hf

    return load_hf(path)


def test_precision_fp8_runs_the_policy_through_fp8_linear_layers(sft_checkpoint, tmp_path):
    """precision = "fp8" means the same in grpo as in every training stage (the shared core)."""
    from dsctl.fp8.linear import Fp8Linear

    ckpt, tokenizer, problems = sft_checkpoint
    cfg = _cfg(max_steps=1, precision="fp8", update_epochs=1)
    trainer = GRPOTrainer(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, cfg, _ctx(tmp_path, "fp8"), seed=0)
    assert any(isinstance(m, Fp8Linear) for m in trainer.model.modules())
    assert not any(isinstance(m, Fp8Linear) for m in trainer.reference.modules())  # frozen, never trained
    assert trainer.fit()["precision"] == "fp8"
