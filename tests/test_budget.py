"""Estimates before a run (dsctl/train/budget.py) and the refusals they drive."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dsctl.errors import UserError
from dsctl.model import DeepSeekV3, ModelConfig, compute_loss
from dsctl.pipeline.recipe import parse_recipe
from dsctl.pipeline.runner import Runner, plan
from dsctl.pipeline.stage import StageRegistry
from dsctl.pipeline.store import Store
from dsctl.progress import Reporter
from dsctl.train.budget import GIB, check_context, train_flops_per_token, train_memory


@pytest.mark.parametrize("preset,seq_len", [("tiny", 64), ("small", 128)])
def test_flops_per_token_match_torchs_count_of_a_training_step(preset, seq_len):
    config = ModelConfig.preset(preset, vocab_size=512, max_position_embeddings=1024)
    torch.manual_seed(0)
    model = DeepSeekV3(config)
    ids = torch.randint(0, 512, (2, seq_len))
    with FlopCounterMode(display=False) as counter:
        compute_loss(model, ids).loss.backward()
    measured = counter.get_total_flops() / ids.numel()
    # torch counts the routed experts a token actually reached: the estimate's K per token
    assert train_flops_per_token(config, seq_len) == pytest.approx(measured, rel=0.15)


def test_memory_estimate_grows_with_the_batch_and_names_its_parts():
    config = ModelConfig.preset("100m")
    one, eight = (train_memory(config, b, 1024, "bf16", "cuda") for b in (1, 8))
    total, _ = config.num_parameters()
    assert one.parameters == eight.parameters == 16 * total
    assert eight.activations == pytest.approx(8 * one.activations, rel=0.01) and eight.total > one.total
    assert "weights+optimizer" in eight.describe() and f"{eight.total / GIB:.1f} GiB" in eight.describe()


def test_context_check_names_the_fix():
    with pytest.raises(ValueError, match="seq_len 2048 is past model 'small''s context of 1024"):
        check_context(ModelConfig.preset("small"), 2048, "model 'small'")


def _pretrain_recipe(**pretrain):
    return parse_recipe({"recipe": {"name": "big"}, "stages": {
        "source": {"task_problems_per_family": 50, "max_prose_docs": 20, "passkey_docs": 0, "ledger_docs": 0},
        "tokenize": {"from": "source", "vocab_size": 300},
        "pretrain": {"from": "tokenize", **pretrain},
    }})


@pytest.mark.parametrize("pretrain,message", [
    ({"model": "100m", "batch_size": 4096, "seq_len": 4096},
     r"model '100m' at batch_size 4096 × seq_len 4096 needs about .* GiB .* lower batch_size"),
    ({"model": "small", "seq_len": 4096}, r"seq_len 4096 is past model 'small''s context of 1024"),
])
def test_a_pretrain_that_cannot_run_here_is_refused_before_any_stage_runs(tmp_path, pretrain, message):
    store = Store(tmp_path)
    plans = plan(_pretrain_recipe(**pretrain), StageRegistry.discover())
    with pytest.raises(UserError, match=r"\[stages.pretrain\]: " + message):
        Runner(store, Reporter(quiet=True), recipe_name="big").execute(plans)
    assert list(store.keys()) == [], "a stage ran before the refusal"
