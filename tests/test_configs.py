"""Stage configs compose shared pieces: each field declared once, defaults changed per stage."""

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass

import pytest

from dsctl.configs import config_fields, field_docs, stage_defaults
from dsctl.pipeline.stage import StageRegistry
from dsctl.train.config import LMTrainConfig, TrainConfig


def test_stage_defaults_change_the_default_and_keep_the_pieces_docs_and_type():
    @dataclass
    @stage_defaults(lr=1e-4, schedule="constant", max_steps=7)
    class Tuned(TrainConfig):
        extra: int = 1
        """A field of its own."""

    assert (Tuned().lr, Tuned().schedule, Tuned().max_steps) == (1e-4, "constant", 7)
    assert TrainConfig().lr == 3e-3  # the piece itself is untouched
    assert field_docs(Tuned)["lr"] == field_docs(TrainConfig)["lr"]
    assert [f.name for f in config_fields(Tuned)][-1] == "extra"  # re-defaulted fields keep their place


def test_stage_defaults_refuses_a_field_the_class_does_not_inherit():
    with pytest.raises(TypeError, match="learning_rate"):
        @dataclass
        @stage_defaults(learning_rate=1e-4)
        class Typo(TrainConfig):
            pass


def test_mutable_defaults_are_copied_per_instance():
    from dsctl.tasks.config import TaskConfig

    @dataclass
    @stage_defaults(families=["arithmetic", "countdown"])
    class Two(TaskConfig):
        pass

    a, b = Two(), Two()
    a.families.append("equations")
    assert b.families == ["arithmetic", "countdown"]


def _declaring_class(cls: type, name: str) -> type:
    """The class in `cls`'s MRO whose body declares field `name` (`stage_defaults` only
    re-defaults a field; it declares nothing)."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
            if any(isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == name for n in body):
                return klass
    raise AssertionError(f"{cls.__name__}.{name} is declared nowhere")


def test_every_stage_field_is_declared_once_and_documented():
    """A name means one thing: every stage that has a field gets it from the same class
    (a shared piece), and every field is documented."""
    declared: dict[str, set[str]] = {}
    for spec in StageRegistry.discover():
        for f in config_fields(spec.config):
            assert field_docs(spec.config).get(f.name), f"{spec.name}.{f.name} has no documentation"
            klass = _declaring_class(spec.config, f.name)
            declared.setdefault(f.name, set()).add(f"{klass.__module__}.{klass.__qualname__}")
    repeated = {name: sorted(where) for name, where in declared.items() if len(where) > 1}
    assert not repeated, f"fields declared in more than one class: {repeated}"


def test_grpo_lists_no_language_model_batch_options():
    import stages.grpo

    names = {f.name for f in config_fields(stages.grpo.STAGE.config)}
    lm_only = {f.name for f in config_fields(LMTrainConfig)} - {f.name for f in config_fields(TrainConfig)}
    assert lm_only == {"seq_len", "grad_accum", "doc_masking", "eval_every", "eval_batches", "spike_factor"}
    assert not names & lm_only
