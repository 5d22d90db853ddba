"""The grpo stage end to end on a tiny SFT'd model: it learns from rewards, runs through
the real store, and resumes bit-identically after an interruption; the DAPO options and
the completions log, on one step of a hand-made rollout."""

import json
import random

import pytest
import torch

from dsctl.configs import build_config
from dsctl.errors import UserError
from dsctl.model import DeepSeekV3, ModelConfig, compute_loss
from dsctl.pipeline.stage import StageContext, StageSpec
from dsctl.pipeline.testing import run_stage
from dsctl.progress import Reporter
from dsctl.rl.config import GRPOConfig
from dsctl.rl.rollout import Rollout
from dsctl.rl.trainer import GRPOTrainer
from dsctl.tasks import FAMILIES, reasoning_target
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
    cfg = _cfg(log_completions_every=1)  # step 3's rows are written, then lost with the step
    full = GRPOTrainer(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, cfg, _ctx(tmp_path, "full"),
                       seed=0)
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
        DiesAtStep4(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, cfg, ctx, seed=0).fit()
    assert '"step": 3' in (ctx.scratch / "completions.jsonl").read_text()  # beyond the step-2 checkpoint
    torch.manual_seed(123)  # a new process: resume may not rely on leftover global RNG state
    resumed = GRPOTrainer(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, cfg, ctx, seed=0)
    resumed.fit()
    for (name, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(full.reference.state_dict().items(), resumed.reference.state_dict().items()):
        assert torch.equal(a, b), f"reference {name}"
    assert [json.loads(line)["step"] for line in ctx.metrics_path.read_text().splitlines()] == list(range(1, 5))
    assert resumed.completions_path.read_text() == full.completions_path.read_text()


def test_grpo_raises_training_reward_on_easy_sums(sft_checkpoint, tmp_path):
    ckpt, tokenizer, problems = sft_checkpoint
    cfg = _cfg(max_steps=12, prompts_per_step=4, group_size=6, lr=2e-3, update_epochs=1, ref_refresh_every=0,
               checkpoint_every=100)
    trainer = GRPOTrainer(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, cfg, _ctx(tmp_path, "learn"),
                          seed=0)
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
    from dsctl.cli.plots import panels

    assert panels({"grpo": records})[:3] == ["reward_mean", "accuracy", "groups_solved"]


def test_stage_runs_through_run_stage_and_reports_held_out_accuracy(sft_checkpoint, tmp_path, capsys):
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
    # what the policy wrote: the first and the last step (log_completions_every = 10), 2 prompts × G = 4
    rows = [json.loads(line) for line in (artifact.path / "completions.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1] * 8 + [2] * 8
    assert {"step", "problem_id", "prompt", "completion", "reward", "correct", "truncated", "tokens"} <= set(rows[0])
    from dsctl.cli import main

    main(["--workdir", str(tmp_path / "work"), "show", artifact.key])
    shown = capsys.readouterr().out
    assert "last 3 of 16 logged completions" in shown
    assert f"step 2  {rows[-1]['problem_id']}  reward {rows[-1]['reward']}" in shown


def load_model_at(path):
    from dsctl.model.hf import load_hf

    return load_hf(path)


def test_precision_fp8_runs_the_policy_through_fp8_linear_layers(sft_checkpoint, tmp_path):
    """precision = "fp8" means the same in grpo as in every training stage (the shared core)."""
    from dsctl.fp8.linear import Fp8Linear

    ckpt, tokenizer, problems = sft_checkpoint
    cfg = _cfg(max_steps=1, precision="fp8", update_epochs=1)
    trainer = GRPOTrainer(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, cfg, _ctx(tmp_path, "fp8"),
                          seed=0)
    assert any(isinstance(m, Fp8Linear) for m in trainer.model.modules())
    assert not any(isinstance(m, Fp8Linear) for m in trainer.reference.modules())  # frozen, never trained
    assert trainer.fit()["precision"] == "fp8"


def _rollout(tokenizer, problem, cut_text: str, cut_len: int) -> Rollout:
    """One group of 4 with a hand-set outcome: right, wrong, cut at `cut_len` tokens, right."""
    right, wrong = f"<think>sum</think><answer>{problem.answer}</answer>", "<think>sum</think><answer>x</answer>"
    texts = [right, wrong, cut_text, right]
    ids = [tokenizer.encode(t) + [tokenizer.eos_id] for t in texts]
    ids[2] = (tokenizer.encode(cut_text) * cut_len)[:cut_len]  # no stop token: max_new_tokens cut it
    values = dict(problems=[problem] * 4, prompt_ids=[tokenizer.chat_prompt(problem.prompt)] * 4, completion_ids=ids,
                  texts=texts, rewards=torch.tensor([1.0, 0.0, 0.0, 1.0]),
                  correct=torch.tensor([1.0, 0.0, 0.0, 1.0]), formatted=torch.tensor([1.0, 1.0, 0.0, 1.0]),
                  truncated=torch.tensor([0.0, 0.0, 1.0, 0.0]), seconds=0.01)
    reasons = ["correct", "wrong", "no_answer", "correct"]
    if "reasons" in Rollout.__dataclass_fields__:
        values["reasons"] = reasons
    ro = Rollout(**values)
    ro.reasons = reasons  # before Rollout has the field, the log reads it the same way
    return ro


def _one_step(sft_checkpoint, tmp_path, monkeypatch, name: str, ro: Rollout, **overrides) -> tuple[GRPOTrainer, dict]:
    """Step 0 of a trainer whose rollout is `ro` (kl_coef = 0: only the policy term moves weights)."""
    ckpt, tokenizer, problems = sft_checkpoint
    monkeypatch.setattr("dsctl.rl.trainer.sample_groups", lambda *args, **kwargs: ro)
    cfg = _cfg(**{"max_steps": 1, "prompts_per_step": 1, "group_size": 4, "kl_coef": 0.0, "update_epochs": 1,
                  "ref_refresh_every": 0, **overrides})
    trainer = GRPOTrainer(load_model_at(ckpt), load_model_at(ckpt), tokenizer, problems, cfg, _ctx(tmp_path, name),
                          seed=0)
    return trainer, trainer.train_step(0)


def test_masked_truncated_completions_leave_the_update_unchanged(sft_checkpoint, tmp_path, monkeypatch):
    _, tokenizer, problems = sft_checkpoint
    weights = {}
    for mask in (True, False):
        for cut in ("<think>sum", "<answer>9"):  # what the cut completion says
            ro = _rollout(tokenizer, problems[0], cut, cut_len=12)
            trainer, metrics = _one_step(sft_checkpoint, tmp_path, monkeypatch, f"{mask}-{cut[1]}", ro,
                                         mask_truncated=mask)
            assert metrics["truncated_rate"] == 0.25  # still counted in the rollout metrics
            assert metrics.get("masked_truncated", 0) == (1 if mask else 0)
            weights[mask, cut] = trainer.model.state_dict()
    for (name, a), b in zip(weights[True, "<think>sum"].items(), weights[True, "<answer>9"].values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(weights[False, "<think>sum"].values(),
                                                     weights[False, "<answer>9"].values()))


def test_completions_log_holds_the_rewards_advantages_came_from(sft_checkpoint, tmp_path, monkeypatch):
    _, tokenizer, problems = sft_checkpoint
    ro = _rollout(tokenizer, problems[0], "<think>sum", cut_len=12)
    assert max(len(ids) for ids in ro.completion_ids[:2]) <= 12 - 4  # complete rows stay clear of the buffer
    trainer, metrics = _one_step(sft_checkpoint, tmp_path, monkeypatch, "log", ro, max_new_tokens=12,
                                 overlong_buffer=4, overlong_penalty=0.5)
    rows = [json.loads(line) for line in trainer.completions_path.read_text().splitlines()]
    assert [r["reward"] for r in rows] == [1.0, 0.0, -0.5, 1.0]  # the cut row at L_max: −factor
    assert [r["overlong_penalty"] for r in rows] == [0.0, 0.0, -0.5, 0.0]
    assert metrics["overlong_penalty"] == -0.125
    assert [r["reason"] for r in rows] == ["correct", "wrong", "no_answer", "correct"]
    assert rows[2] == {**rows[2], "step": 1, "problem_id": problems[0].id, "prompt": problems[0].prompt,
                       "completion": "<think>sum", "correct": False, "truncated": True, "tokens": 12}


def test_loss_aggregation_is_checked_when_the_config_is_read():
    import stages.grpo as grpo

    with pytest.raises(ValueError, match="'token', 'sequence'"):
        GRPOConfig(loss_aggregation="mean")
    with pytest.raises(UserError, match="'token' \\| 'sequence'"):
        build_config(grpo.GrpoStageConfig, {"loss_aggregation": "mean"}, "recipe.toml:3")
    with pytest.raises(ValueError, match="overlong_buffer"):
        grpo.GrpoStageConfig(overlong_buffer=100, max_new_tokens=48)  # the stage config runs GRPOConfig's checks


def test_sequence_aggregation_reaches_the_update_and_survives_micro_batching(sft_checkpoint, tmp_path, monkeypatch):
    _, tokenizer, problems = sft_checkpoint
    grads = {}
    update = GRPOTrainer.update

    def capture(trainer, step, loss):
        grads[trainer.io.scratch.parent.name] = {n: p.grad.clone() for n, p in trainer.model.named_parameters()
                                                 if p.grad is not None}
        return update(trainer, step, loss)

    monkeypatch.setattr(GRPOTrainer, "update", capture)
    for aggregation in ("token", "sequence"):
        for batch_size in (4, 1):
            _one_step(sft_checkpoint, tmp_path, monkeypatch, f"{aggregation}-{batch_size}",
                      _rollout(tokenizer, problems[0], "<think>sum", cut_len=12), loss_aggregation=aggregation,
                      batch_size=batch_size)
    for name, g in grads["sequence-4"].items():  # one row per micro-batch: the same gradient
        torch.testing.assert_close(grads["sequence-1"][name], g, rtol=1e-4, atol=1e-7)
    assert any(not torch.allclose(grads["token-4"][n], g) for n, g in grads["sequence-4"].items())
