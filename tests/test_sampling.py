import pytest
import torch

from dsctl.sampling import batch_seed, sample, stop_rule
from dsctl.tasks import split_of
from dsctl.tasks.config import task_problems
from tests.sft_support import EASY, make_tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dsctl.model import DeepSeekV3, ModelConfig
    from dsctl.tokenizer import Tokenizer

    out = tmp_path_factory.mktemp("tok")
    make_tokenizer(out)
    tokenizer = Tokenizer.load(out)
    torch.manual_seed(0)
    return DeepSeekV3(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size)), tokenizer


def test_task_problems_are_balanced_interleaved_and_from_the_split():
    problems = task_problems(["arithmetic", "countdown", "equations"], "test", 8, seed=0, difficulty=EASY)
    families = [p.family for p in problems]
    assert families[:3] == ["arithmetic", "countdown", "equations"]  # any prefix is balanced
    assert families.count("arithmetic") == 3 and families.count("equations") == 2
    assert all(split_of(p) == "test" for p in problems)
    assert problems == task_problems(["arithmetic", "countdown", "equations"], "test", 8, seed=0, difficulty=EASY)
    with pytest.raises(ValueError, match="families not in use"):
        task_problems(["countdown"], "test", 2, seed=0, difficulty=EASY)


def test_same_seed_gives_same_samples_and_chunked_calls_match_one_call(setup):
    model, tokenizer = setup
    prompts = ["What is 12 + 7?", "What is 3 * 4?", "Solve for x: 2x = 8.", "What is 40 - 9?"]
    kw = dict(n=2, max_new_tokens=6, temperature=1.0, top_p=0.9, batch_size=4)
    whole = sample(model, tokenizer, prompts, seed=5, **kw)
    assert whole == sample(model, tokenizer, prompts, seed=5, **kw)
    # 2 prompts × n=2 = one batch of 4: the second half is batch 1 of the whole call
    halves = sample(model, tokenizer, prompts[:2], seed=5, **kw) + \
        sample(model, tokenizer, prompts[2:], seed=5, first_batch=1, **kw)
    assert halves == whole
    assert whole != sample(model, tokenizer, prompts, seed=6, **kw)
    assert [len(c) for c in whole] == [2, 2, 2, 2]


def test_completions_cut_at_the_budget_are_marked_unfinished(setup):
    model, tokenizer = setup
    out = sample(model, tokenizer, ["What is 1 + 1?"] * 3, n=4, max_new_tokens=3, temperature=1.0, seed=0)
    for c in (c for cs in out for c in cs):
        assert c.n_tokens <= 3
        if c.n_tokens < 3:  # only a stop token ends a completion early
            assert c.finished
    assert any(not c.finished for cs in out for c in cs)


def test_stop_tokens_are_eos_and_answer_close(setup):
    _, tokenizer = setup  # dsctl's tokenizer: </answer> is one token, no stop string needed
    assert stop_rule(tokenizer) == {"stop_token_ids": [tokenizer.eos_id, tokenizer.special_tokens["</answer>"]]}


def test_batch_seeds_are_distinct_per_batch_and_run():
    seeds = {batch_seed(s, b) for s in range(4) for b in range(50)}
    assert len(seeds) == 200
