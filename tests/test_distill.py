import json

import pytest
import torch
import torch.nn.functional as F

from dsctl.errors import UserError
from dsctl.pipeline.testing import run_stage
from dsctl.tasks import reasoning_target
from dsctl.tasks.config import task_problems
from dsctl.train import distill as distill_lib
from dsctl.train.distill import logit_distillation_kl
from stages import distill
from tests.sft_support import EASY, fail_once_at_step, make_checkpoint, make_tokenizer, tiny_train_config

FAMILIES = ["arithmetic", "equations"]
STUDENT = {"student": "tiny", "student_overrides": {"hidden_size": 32, "num_hidden_layers": 1}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tokenizer, a tiny teacher checkpoint on it, and a samples artifact directory."""
    root = tmp_path_factory.mktemp("distill")
    make_tokenizer(root / "tok")
    teacher = make_checkpoint(root / "teacher", root / "tok", seed=1)
    samples = root / "samples"
    samples.mkdir()
    rows = [{"id": f"{p.id}-s0", "family": p.family, "problem_id": p.id, "prompt": p.prompt,
             "completion": reasoning_target(p), "reward": 1.1, "correct": True, "format": True, "source": "test"}
            for p in task_problems(FAMILIES, "worked", 40, seed=0, difficulty=EASY)]
    (samples / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{torn line\n")
    return root, teacher, samples


def _config(**kw):
    return {**tiny_train_config(), **STUDENT, "families": FAMILIES, "difficulty": EASY, "eval_problems": 2,
            "max_new_tokens": 8, **kw}


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
    torch.manual_seed(0)
    teacher = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, 1, 2, -100, -100, -100]])
    assert logit_distillation_kl(teacher.clone(), teacher, labels, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    student = teacher + torch.randn_like(teacher)
    value = logit_distillation_kl(student, teacher, labels, 2.0)
    assert value.item() > 0
    # Same as torch's KL on the scored positions (logits at t predict labels[t+1]), × T².
    keep = labels[:, 1:] != -100
    ref = F.kl_div(F.log_softmax(student[:, :-1][keep] / 2, -1), F.log_softmax(teacher[:, :-1][keep] / 2, -1),
                   log_target=True, reduction="batchmean") * 4
    assert value.item() == pytest.approx(ref.item(), rel=1e-5)
    # Positions whose next label is ignored do not count, however different they are.
    noisy = student.clone()
    noisy[0, 0] += 100.0
    noisy[1, 3:] -= 50.0
    assert logit_distillation_kl(noisy, teacher, labels, 2.0).item() == pytest.approx(value.item(), rel=1e-6)
    # Nor does a target in another packed document.
    docs = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    cross = logit_distillation_kl(student, teacher, labels, 2.0, doc_ids=docs)
    assert cross.item() != pytest.approx(value.item())


def test_distill_loss_adds_nothing_when_student_is_the_teacher(world):
    from dsctl.pipeline.store import Artifact
    from dsctl.train.artifacts import load_model

    _, teacher_dir, _ = world
    student = load_model(Artifact(teacher_dir, "k", "checkpoint", {}))
    teacher = load_model(Artifact(teacher_dir, "k", "checkpoint", {})).eval()
    student.eval()  # no balance-loss noise: compare the two losses on the same forward
    ids = torch.randint(12, student.config.vocab_size, (2, 16))
    labels = ids.clone()
    labels[:, :5] = -100
    batch = {"input_ids": ids, "labels": labels, "doc_ids": torch.zeros_like(ids)}
    plain = distill_lib.make_distill_loss(None, 1.0, 2.0)(student, batch)
    with_kl = distill_lib.make_distill_loss(teacher, 1.0, 2.0)(student, batch)
    assert with_kl.loss.item() == pytest.approx(plain.loss.item(), abs=1e-6)
    torch.nn.init.normal_(student.lm_head.weight, std=0.5)
    plain = distill_lib.make_distill_loss(None, 1.0, 2.0)(student, batch)
    with_kl = distill_lib.make_distill_loss(teacher, 0.5, 2.0)(student, batch)
    assert with_kl.loss.item() > plain.loss.item() + 1e-3
    # the term is the KL of the full next-token distributions at the learned positions
    docs = batch["doc_ids"]
    full = logit_distillation_kl(student(ids, doc_ids=docs), teacher(ids, doc_ids=docs), labels, 2.0, docs)
    assert with_kl.loss.item() - plain.loss.item() == pytest.approx(0.5 * full.item(), rel=1e-4)
    from dsctl.model import compute_loss

    assert plain.loss.item() == compute_loss(student, ids, labels, doc_ids=docs).loss.item()  # one training loss


def test_distill_trains_a_smaller_student_and_compares_it_with_the_teacher(tmp_path, world):
    _, teacher, samples = world
    art = run_stage(distill.STAGE, _config(max_steps=8, lr=3e-3), {"samples": [samples], "teacher": [teacher]},
                    tmp_path / "work")
    m = art.metrics
    assert m["kl_used"] is True and m["sample_examples"] == 40 and m["malformed_rows"] == 1
    assert m["student_params"] < m["teacher_params"]
    assert 0 <= m["student_accuracy"] <= 1 and 0 <= m["teacher_accuracy"] <= 1
    assert m["student_tokens_per_s"] > 0 and m["teacher_tokens_per_s"] > 0
    assert m["val_kl_teacher_student"] > 0
    losses = [json.loads(line)["lm_loss"] for line in (art.path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    config = json.loads((art.path / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["num_hidden_layers"] == 1


def test_mismatched_tokenizers_turn_the_kl_term_off_or_stop(tmp_path, world):
    root, teacher, samples = world
    make_tokenizer(tmp_path / "tok2", vocab_size=500)
    student = make_checkpoint(tmp_path / "student", tmp_path / "tok2")
    inputs = {"samples": [samples], "teacher": [teacher], "student": [student]}
    art = run_stage(distill.STAGE, _config(max_steps=2, eval_problems=0), inputs, tmp_path / "w1")
    assert art.metrics["kl_used"] is False
    with pytest.raises(UserError, match="tokenizers differ"):
        run_stage(distill.STAGE, _config(max_steps=2, eval_problems=0, on_tokenizer_mismatch="error"), inputs,
                  tmp_path / "w2")


def test_distill_resume_after_a_crash_gives_identical_weights(tmp_path, world, monkeypatch):
    from safetensors.torch import load_file

    _, teacher, samples = world
    config = _config(max_steps=6, checkpoint_every=3, eval_problems=0)
    inputs = {"samples": [samples], "teacher": [teacher]}
    straight = run_stage(distill.STAGE, config, inputs, tmp_path / "a")
    fail_once_at_step(monkeypatch, 4, lambda: run_stage(distill.STAGE, config, inputs, tmp_path / "b"))
    resumed = run_stage(distill.STAGE, config, inputs, tmp_path / "b")
    a, b = load_file(straight.path / "model.safetensors"), load_file(resumed.path / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_student_from_all_teacher_layers_is_the_teacher_and_from_fewer_is_a_copy_of_them():
    from dsctl.model import DeepSeekV3, ModelConfig

    torch.manual_seed(0)
    teacher = DeepSeekV3(ModelConfig.preset("tiny", num_hidden_layers=3)).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (2, 9))
    same = distill_lib.student_from_layers(teacher, [0, 1, 2]).eval()
    assert torch.equal(same(ids), teacher(ids))
    student = distill_lib.student_from_layers(teacher, [0, 2], {"num_nextn_predict_layers": 0})
    assert student.config.num_hidden_layers == 2 and len(student.mtp) == 0
    assert torch.equal(student.layers[1].self_attn.kv_a_proj_with_mqa.weight,
                       teacher.layers[2].self_attn.kv_a_proj_with_mqa.weight)
    assert torch.equal(student.lm_head.weight, teacher.lm_head.weight)
    assert student.num_parameters()[0] < teacher.num_parameters()[0]
    for bad in ([2, 0], [1, 2], [0, 3]):  # out of order, dense layer 0 missing, no such layer
        with pytest.raises(UserError):
            distill_lib.student_from_layers(teacher, bad)
    with pytest.raises(UserError, match="shapes"):
        distill_lib.student_from_layers(teacher, [0, 1], {"hidden_size": 32})


def test_distill_reports_how_many_examples_are_teacher_samples(tmp_path, world):
    _, teacher, samples = world
    art = run_stage(distill.STAGE, _config(max_steps=2, train_problems=10, eval_problems=0),
                    {"samples": [samples], "teacher": [teacher]}, tmp_path / "work")
    m = art.metrics
    assert m["sample_examples"] == 40 and m["task_examples"] == 10
    assert m["teacher_sample_share"] == pytest.approx(0.8)
