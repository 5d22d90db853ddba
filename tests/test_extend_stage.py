"""The extend stage end to end on a tiny checkpoint, through the real runner and store."""

import json

import pytest

from dsctl.pipeline.testing import run_stage
from tests.test_eval_stage import tiny_checkpoint, tiny_shards, tiny_tokenizer


@pytest.fixture(scope="module")
def base_and_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("extend")
    tok = tiny_tokenizer(root / "tok")
    return tiny_checkpoint(root / "base", tok, seed=0, context=96), tiny_shards(root / "shards", tok)


def test_extend_writes_a_yarn_checkpoint_and_passkey_table(base_and_shards, tmp_path):
    from dsctl.model.hf import load_hf
    from stages import extend

    base, shards = base_and_shards
    config = {"factor": 2, "max_steps": 3, "batch_size": 2, "warmup_steps": 1, "passkey_fraction": 0.5,
              "passkey_multiples": [1, 2], "passkey_trials": 2, "checkpoint_every": 2, "threads": 1}
    artifact = run_stage(extend.STAGE, config, {"checkpoint": [base], "shards": [shards]}, tmp_path / "work")
    hf = json.loads((artifact.path / "config.json").read_text())
    assert hf["rope_scaling"] == {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 96,
                                  "beta_fast": 4.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
    assert hf["max_position_embeddings"] == 192
    assert load_hf(artifact.path).config.rope_scaling["factor"] == 2.0
    table = json.loads((artifact.path / "passkey.json").read_text())
    assert set(table["accuracy"]) == {"base", "yarn", "extended"}
    assert set(table["accuracy"]["extended"]) == {"96", "192"}
    for model in ("base", "yarn", "extended"):  # past-original loss only where there is a past
        assert "val_loss_past_original" not in table["accuracy"][model]["96"]
        assert table["accuracy"][model]["192"]["val_loss_past_original"] > 0
    metrics = artifact.metrics
    assert {"passkey_base_2x", "passkey_yarn_2x", "passkey_extended_2x", "steps"} <= set(metrics)
    assert {"val_loss_base_1x", "val_loss_yarn_2x", "val_loss_extended_2x", "val_loss_doc_masked_base",
            "val_loss_doc_masked_extended"} <= set(metrics)
    assert {f"val_loss_past_original_{m}_2x" for m in ("base", "yarn", "extended")} <= set(metrics)
    assert not any(k.startswith("val_loss_past_original_") and k.endswith("_1x") for k in metrics)
    assert all(metrics[k] > 0 for k in metrics if k.startswith("val_loss_"))
    assert metrics["steps"] == 3 and metrics["train_seq_len"] == 192 and metrics["original_context"] == 96
    assert (artifact.path / "tokenizer.model").is_file() and (artifact.path / "training_state").is_dir()
