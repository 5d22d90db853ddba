"""The pretrain stage end to end through `dsctl run`: it learns, and SIGKILL + resume is exact."""

import hashlib
import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

RECIPE = """
[recipe]
name = "tinypre"
seed = 0

[stages.source]
task_problems_per_family = 120
max_prose_docs = 200
exact_dups = 0
near_dups = 0
boilerplate = 0
junk = 0
short = 0
non_english = 0
passkey_docs = 0
ledger_docs = 0

[stages.tokenize]
from = "source"
vocab_size = 600
validation_fraction = 0.05

[stages.pretrain]
from = "tokenize"
model = "tiny"
precision = "fp32"
max_steps = 80
lr = 1e-2
batch_size = 8
seq_len = 64
warmup_steps = 3
checkpoint_every = 5
eval_every = 40
eval_batches = 2
threads = 1
"""


def _run(cmd, env, workdir):
    return subprocess.run([*cmd, "run", str(workdir.parent / "tinypre.toml")],
                          env={**env, "DSCTL_WORKDIR": str(workdir)}, capture_output=True, text=True, timeout=600)


def _artifact(workdir: Path, stage: str) -> Path:
    key = json.loads((workdir / "refs" / "tinypre" / f"{stage}.json").read_text())["key"]
    return workdir / "objects" / key


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """A work directory with source and tokenize done, copied per test."""
    root = tmp_path_factory.mktemp("pre")
    (root / "tinypre.toml").write_text(RECIPE)
    return root


def test_pretrain_beats_unigram_and_sigkill_resume_is_bit_identical(tokenized, dsctl_cmd, cli_env):
    reference = tokenized / "reference"
    env = {k: v for k, v in cli_env.items() if k != "DSCTL_PLUGINS"}
    first = subprocess.run([*dsctl_cmd, "run", str(tokenized / "tinypre.toml"), "--until", "tokenize"],
                           env={**env, "DSCTL_WORKDIR": str(reference)}, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    killed = tokenized / "killed"
    shutil.copytree(reference, killed)

    done = _run(dsctl_cmd, env, reference)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((_artifact(reference, "pretrain") / "manifest.json").read_text())["metrics"]
    assert metrics["val_loss"] < metrics["unigram_val_loss"] - 0.3, metrics

    rng = random.Random(7)
    proc = subprocess.Popen([*dsctl_cmd, "run", str(tokenized / "tinypre.toml")],
                            env={**env, "DSCTL_WORKDIR": str(killed)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((killed / "staging").glob("*/scratch/checkpoints/LATEST")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((killed / "staging").iterdir()), "the kill should land mid-training"
    resumed = _run(dsctl_cmd, env, killed)
    assert resumed.returncode == 0, resumed.stderr
    assert "resum" in resumed.stderr

    def digest(workdir):
        return hashlib.sha256((_artifact(workdir, "pretrain") / "model.safetensors").read_bytes()).hexdigest()

    assert digest(killed) == digest(reference)
    metrics_lines = (_artifact(killed, "pretrain") / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in metrics_lines]
    assert steps == list(range(1, 81))
