"""An exported checkpoint runs under lm-evaluation-harness and scores as our own scorer does."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsctl.eval.lm_eval_task import write_lm_eval_task
from dsctl.eval.multiple_choice import load_choice_questions, score_multiple_choice
from tests.test_eval_stage import FIXTURE_MC, tiny_checkpoint, tiny_tokenizer


@pytest.mark.slow
def test_lm_eval_harness_loglikelihoods_equal_ours(tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")  # lm-eval's `hf` model needs it (the lm-eval[hf] extra)
    from dsctl.model.hf import load_hf
    from dsctl.tokenizer import Tokenizer

    tok = tiny_tokenizer(tmp_path / "tok")
    ckpt = tiny_checkpoint(tmp_path / "ckpt", tok, seed=0)
    task_dir = tmp_path / "task"
    write_lm_eval_task(FIXTURE_MC, task_dir)
    cli = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or "lm_eval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run([cli, "--model", "hf", "--model_args", f"pretrained={ckpt},dtype=float32",
                    "--tasks", "dsctl_mc", "--include_path", str(task_dir), "--device", "cpu",
                    "--batch_size", "4", "--output_path", str(tmp_path / "out"), "--log_samples"],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    logged = [json.loads(line) for f in (tmp_path / "out").rglob("samples_dsctl_mc_*.jsonl")
              for line in f.read_text().splitlines()]
    harness = {row["doc_id"]: [float(r[0][0]) for r in row["resps"]] for row in logged}

    ours = score_multiple_choice(load_hf(ckpt).eval(), Tokenizer.load(ckpt), load_choice_questions(FIXTURE_MC))
    assert len(harness) == ours["n"] == 3
    for doc_id, scored in enumerate(ours["per_question"]):
        assert scored["loglikelihoods"] == pytest.approx(harness[doc_id], abs=1e-3)
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]["dsctl_mc"]
    assert results["acc,none"] == pytest.approx(ours["acc"])
    assert results["acc_norm,none"] == pytest.approx(ours["acc_norm"])
