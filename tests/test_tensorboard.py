"""TensorBoard event files mirror metrics.jsonl (dsctl.pipeline.stage.ScalarEvents): written beside
it in the artifact, read back here with TensorBoard's own reader."""

import json
import math
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dsctl.pipeline.stage import METRICS_FILE, TENSORBOARD_DIR, StageContext, StageSpec
from dsctl.pipeline.testing import run_stage
from dsctl.progress import Reporter
from stages import sft
from tests.sft_support import EASY, fail_once_at_step, make_checkpoint, make_tokenizer, tiny_train_config

SPEC = StageSpec("t", 1, dict, lambda ctx: None, "checkpoint")


def _ctx(root: Path) -> StageContext:
    (root / "artifact").mkdir(parents=True, exist_ok=True)
    return StageContext(SPEC, None, 0, {}, root / "artifact", root / "scratch", Reporter(quiet=True), "t", "k")


def _scalars(artifact: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard reads the event files of `artifact`."""
    events = EventAccumulator(str(artifact / TENSORBOARD_DIR))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _logged(artifact: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) of `name` in metrics.jsonl, as the float32 TensorBoard stores."""
    records = [json.loads(line) for line in (artifact / METRICS_FILE).read_text().splitlines()]
    return [(r["step"], float(np.float32(r[name]))) for r in records if name in r and "step" in r]


def test_sft_losses_reach_tensorboard_at_their_steps_and_a_resumed_run_publishes_each_step_once(
        tmp_path, monkeypatch):
    tok_dir = tmp_path / "tok"
    make_tokenizer(tok_dir)
    ckpt = make_checkpoint(tmp_path / "base", tok_dir)
    config = {**tiny_train_config(max_steps=6, checkpoint_every=3, seq_len=64, log_every=1),
              "families": ["arithmetic"], "difficulty": EASY, "train_problems": 12, "eval_problems": 0}
    fail_once_at_step(monkeypatch, 4, lambda: run_stage(sft.STAGE, config, {"checkpoint": [ckpt]}, tmp_path / "work"))
    (staging,) = (tmp_path / "work" / "staging").iterdir()
    assert [s for s, _ in _scalars(staging / "artifact")["loss"]] == [1, 2, 3, 4]  # readable before publish

    artifact = run_stage(sft.STAGE, config, {"checkpoint": [ckpt]}, tmp_path / "work").path
    scalars = _scalars(artifact)
    assert scalars["loss"] == _logged(artifact, "loss")
    assert [s for s, _ in scalars["loss"]] == list(range(1, 7))  # step 4, logged by both attempts, once
    assert scalars["lr"] == _logged(artifact, "lr") and "grad_norm" in scalars
    assert len(list((artifact / TENSORBOARD_DIR).iterdir())) == 1  # the failed attempt's file was replaced
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert any(rel.startswith(f"{TENSORBOARD_DIR}/events.out.tfevents.") for rel in manifest["files"])


def test_only_finite_numbers_of_records_with_a_step_become_scalars(tmp_path):
    ctx = _ctx(tmp_path)
    ctx.log(step=1, loss=math.nan, lr=1e-3, tokens=512, event="skipped", reference_refreshed=True,
            grad_norm=1e39, sizes=[1, 2])
    ctx.log(checkpoint="sft", accuracy=0.5)  # no step: metrics.jsonl only
    ctx.log(step=2, loss=2.5, lr=2e-3, tokens=1024)
    ctx.close()
    scalars = _scalars(ctx.out)
    assert set(scalars) == {"loss", "lr", "tokens"}
    assert scalars["loss"] == [(2, 2.5)]
    assert scalars["tokens"] == [(1, 512.0), (2, 1024.0)]
    assert [s for s, _ in scalars["lr"]] == [1, 2]


def test_a_new_attempt_rewrites_the_events_from_the_metrics_a_killed_one_left(tmp_path):
    killed = _ctx(tmp_path)
    for step in range(1, 6):
        killed.log(step=step, loss=10.0 - step)  # never closed: as if SIGKILLed
    assert [s for s, _ in _scalars(killed.out)["loss"]] == [1, 2, 3, 4, 5]  # whole without a close
    metrics = killed.out / METRICS_FILE  # the training loop's resume cuts back to its checkpoint (step 3)
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()[:3]))

    resumed = _ctx(tmp_path)
    resumed.log(step=4, loss=0.5)
    resumed.close()
    assert _scalars(resumed.out)["loss"] == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 0.5)]
    assert len(list((resumed.out / TENSORBOARD_DIR).iterdir())) == 1


def test_only_rank_zero_of_a_multi_process_run_writes_events(tmp_path):
    from dsctl.train.worker import _RankContext

    for rank in (0, 1):
        root = tmp_path / f"rank{rank}"
        (root / "artifact").mkdir(parents=True)
        (root / "scratch").mkdir()
        ctx = _RankContext(SPEC, None, 0, {}, root / "artifact", root / "scratch", Reporter(quiet=True), "t", "k",
                           rank=rank)
        ctx.log(step=1, loss=1.0)
        ctx.close()
        assert (root / "artifact" / TENSORBOARD_DIR).exists() == (rank == 0)
        assert not list((root / "scratch").rglob("events.out.tfevents.*"))
