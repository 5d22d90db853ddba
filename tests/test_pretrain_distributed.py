"""pretrain on several processes through torchrun (gloo, CPU): data parallel equals one
process with the micro-batches of all ranks, a SIGKILLed data-parallel run resumes exactly,
DualPipe and 1F1B train the same weights as one process, and bad configs are refused."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dsctl.errors import UserError
from dsctl.testing import run_stage
from stages import pretrain

SOURCE_AND_TOKENIZE = """
[recipe]
name = "{name}"
seed = 0

[stages.source]
task_problems_per_family = 120
max_prose_docs = 60
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
vocab_size = 400
validation_fraction = 0.05
"""

SMALL_RUN = dict(model="tiny", precision="fp32", lr=1e-2, batch_size=4, seq_len=32, warmup_steps=1,
                 eval_every=0, eval_batches=1, threads=1)
PIPELINE_RUN = dict(SMALL_RUN, max_steps=3, grad_accum=4, mtp_depth=0, doc_masking=False, checkpoint_every=3)


def _toml(values: dict) -> str:
    return "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())


def _dsctl(dsctl_cmd, cli_env, workdir: Path, recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in cli_env.items() if k != "DSCTL_PLUGINS"}
    return subprocess.run([*dsctl_cmd, "run", str(recipe), *extra], env={**env, "DSCTL_WORKDIR": str(workdir)},
                          capture_output=True, text=True, timeout=900)


def _artifact(workdir: Path, recipe: str, stage: str) -> Path:
    key = json.loads((workdir / "refs" / recipe / f"{stage}.json").read_text())["key"]
    return workdir / "objects" / key


def _weights(artifact) -> dict[str, torch.Tensor]:
    return load_file(str(Path(getattr(artifact, "path", artifact)) / "model.safetensors"))


def _max_weight_diff(a, b) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """(work directory with source + tokenize done through `dsctl run`, the shards artifact)."""
    root = tmp_path_factory.mktemp("dist")
    recipe = root / "tinydist.toml"
    recipe.write_text(SOURCE_AND_TOKENIZE.format(name="tinydist"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "DSCTL_WORKDIR": str(root / "base")}
    done = subprocess.run([sys.executable, "-m", "dsctl.cli", "run", str(recipe)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return root / "base", _artifact(root / "base", "tinydist", "tokenize")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the run_stage runs, so a baseline two tests share is built once."""
    return tmp_path_factory.mktemp("store")


def test_pipeline_configs_that_would_be_ignored_are_refused(tokenized, store):
    _, shards = tokenized
    bad = dict(SMALL_RUN, max_steps=1, nproc=2, pipeline="dualpipe", grad_accum=2, mtp_depth=1, doc_masking=True)
    with pytest.raises(Exception) as caught:
        run_stage(pretrain.STAGE, bad, {"shards": [shards]}, store)
    message = str(caught.value)
    for expected in ("mtp_depth = 0", "doc_masking = false", ">= 2 × nproc = 4"):
        assert expected in message, message
    with pytest.raises(Exception, match="even nproc"):
        run_stage(pretrain.STAGE, dict(PIPELINE_RUN, nproc=3, pipeline="dualpipe", grad_accum=6),
                  {"shards": [shards]}, store)


def test_parallel_config_problems_accepts_valid_pipeline_and_data_parallel_configs():
    from dsctl.train.parallel_config import check_parallel_config, parallel_config_problems

    assert parallel_config_problems(pretrain.PretrainConfig(**PIPELINE_RUN, nproc=2, pipeline="dualpipe")) == []
    assert parallel_config_problems(pretrain.PretrainConfig(**PIPELINE_RUN, nproc=3, pipeline="1f1b")) == []
    assert parallel_config_problems(pretrain.PretrainConfig(nproc=4)) == []  # data parallel keeps MTP, doc masks
    with pytest.raises(UserError, match="fp8"):
        check_parallel_config(pretrain.PretrainConfig(**dict(PIPELINE_RUN, precision="fp8"), nproc=2, pipeline="1f1b"))


@pytest.mark.slow
def test_two_data_parallel_ranks_equal_one_process_with_double_grad_accum(tokenized, store):
    _, shards = tokenized
    config = dict(SMALL_RUN, max_steps=4, checkpoint_every=2, eval_every=4)
    two_ranks = run_stage(pretrain.STAGE, dict(config, nproc=2, grad_accum=1), {"shards": [shards]}, store)
    one = run_stage(pretrain.STAGE, dict(config, nproc=1, grad_accum=2), {"shards": [shards]}, store)
    assert _max_weight_diff(two_ranks, one) < 1e-5
    rows = [json.loads(line) for line in (two_ranks.path / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (one.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in single], abs=1e-5)
    assert [r["max_load_violation"] for r in rows] == [r["max_load_violation"] for r in single]  # global load
    assert rows[-1]["tokens_per_s"] > 0 and two_ranks.metrics["nproc"] == 2
    assert (two_ranks.path / "training_state" / "optimizer.pt").is_file()
    assert not list(two_ranks.path.glob("metrics.rank*"))


def _job_processes(marker: str) -> list[int]:
    """Live processes whose command line mentions `marker` (the job's scratch dir)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name, config", [
    ("tinyddp", dict(SMALL_RUN, max_steps=6, checkpoint_every=2, nproc=2)),
    ("tinydualpipe", dict(PIPELINE_RUN, max_steps=6, checkpoint_every=2, nproc=2, pipeline="dualpipe")),
], ids=["data-parallel", "dualpipe"])
def test_sigkilled_distributed_run_resumes_to_identical_weights(tokenized, dsctl_cmd, cli_env, name, config):
    base, _ = tokenized
    root = base.parent
    recipe = root / f"{name}.toml"
    recipe.write_text(SOURCE_AND_TOKENIZE.format(name=name) + "\n[stages.pretrain]\nfrom = \"tokenize\"\n"
                      + _toml(config) + "\n")
    reference, killed = root / f"{name}-reference", root / f"{name}-killed"
    shutil.copytree(base, reference)
    shutil.copytree(base, killed)
    done = _dsctl(dsctl_cmd, cli_env, reference, recipe)
    assert done.returncode == 0, done.stderr

    env = {k: v for k, v in cli_env.items() if k != "DSCTL_PLUGINS"}
    proc = subprocess.Popen([*dsctl_cmd, "run", str(recipe)], env={**env, "DSCTL_WORKDIR": str(killed)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((killed / "staging").glob("*/scratch/checkpoints/LATEST")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (staging,) = (killed / "staging").iterdir()
    while _job_processes(str(staging)) and time.time() < deadline:  # the ranks follow their parent down
        time.sleep(0.1)
    assert not _job_processes(str(staging)), "ranks outlived the killed dsctl"
    assert not (staging / "scratch" / "checkpoints" / "step-0000006").exists(), "the kill should land mid-training"

    resumed = _dsctl(dsctl_cmd, cli_env, killed, recipe)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-" in resumed.stderr

    def digest(workdir):
        return hashlib.sha256((_artifact(workdir, name, "pretrain") / "model.safetensors").read_bytes()).hexdigest()

    assert digest(killed) == digest(reference)
    metrics = (_artifact(killed, name, "pretrain") / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == list(range(1, 7))


@pytest.mark.slow
def test_dualpipe_recipe_trains_the_same_weights_as_one_process(tokenized, store, dsctl_cmd, cli_env):
    base, shards = tokenized
    root = base.parent
    recipe = root / "tinypipe.toml"
    recipe.write_text(SOURCE_AND_TOKENIZE.format(name="tinypipe") + "\n[stages.pretrain]\nfrom = \"tokenize\"\n"
                      + _toml(dict(PIPELINE_RUN, nproc=2, pipeline="dualpipe")) + "\n")
    workdir = root / "pipe"
    shutil.copytree(base, workdir)
    done = _dsctl(dsctl_cmd, cli_env, workdir, recipe)
    assert done.returncode == 0, done.stderr
    piped = _artifact(workdir, "tinypipe", "pretrain")

    one = run_stage(pretrain.STAGE, PIPELINE_RUN, {"shards": [shards]}, store)
    assert _max_weight_diff(piped, one) < 1e-4
    rows = [json.loads(line) for line in (piped / "metrics.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (one.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["lm_loss"] for r in rows] == pytest.approx([r["lm_loss"] for r in single], abs=1e-4)
    assert [r["grad_norm"] for r in rows] == pytest.approx([r["grad_norm"] for r in single], rel=1e-4)

    from dsctl.model.hf import load_hf

    model = load_hf(piped).eval()
    with torch.no_grad():
        logits = model(torch.arange(16).view(1, 16))
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_1f1b_trains_the_same_weights_as_one_process(tokenized, store):
    _, shards = tokenized
    piped = run_stage(pretrain.STAGE, dict(PIPELINE_RUN, nproc=2, pipeline="1f1b"), {"shards": [shards]}, store)
    one = run_stage(pretrain.STAGE, PIPELINE_RUN, {"shards": [shards]}, store)
    assert _max_weight_diff(piped, one) < 1e-4
    assert piped.metrics["steps"] == 3 and piped.metrics["pipeline"] == "1f1b"


@pytest.mark.slow
def test_a_failing_rank_is_reported_with_its_message(tokenized, store):
    _, shards = tokenized
    too_long = dict(SMALL_RUN, max_steps=1, nproc=2, seq_len=1_000_000)
    with pytest.raises(Exception, match=r"rank \d: .*fewer than one sequence of seq_len=1000000"):
        run_stage(pretrain.STAGE, too_long, {"shards": [shards]}, store)


@pytest.mark.slow
def test_two_node_launch_with_user_torchrun_flags_trains_like_one_process(tokenized, store, dsctl_cmd, cli_env):
    """Two torchrun "nodes" on this machine: dsctl starts node 0 with DSCTL_TORCHRUN_ARGS,
    the user starts node 1 on the printed job spec, and the published weights equal one
    process running both ranks' micro-batches."""
    from dsctl.parallel.launch import free_port

    base, shards = tokenized
    root = base.parent
    recipe = root / "tinynodes.toml"
    config = dict(SMALL_RUN, max_steps=4, checkpoint_every=2, eval_every=4)
    recipe.write_text(SOURCE_AND_TOKENIZE.format(name="tinynodes") + "\n[stages.pretrain]\nfrom = \"tokenize\"\n"
                      + _toml(dict(config, nproc=2)) + "\n")
    workdir = root / "nodes"
    shutil.copytree(base, workdir)
    flags = f"--nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:{free_port()}"
    env = {k: v for k, v in cli_env.items() if k != "DSCTL_PLUGINS"}
    node0 = subprocess.Popen([*dsctl_cmd, "run", str(recipe)], env={**env, "DSCTL_WORKDIR": str(workdir),
                             "DSCTL_TORCHRUN_ARGS": flags}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((workdir / "staging").glob("*/scratch/distributed-job.pkl")) and time.time() < deadline:
        time.sleep(0.05)
    (spec,) = (workdir / "staging").glob("*/scratch/distributed-job.pkl")
    node1 = subprocess.run([sys.executable, "-m", "torch.distributed.run", *flags.split(), "-m",
                            "dsctl.train.worker", str(spec)], env=env, capture_output=True, text=True, timeout=600)
    _, node0_err = node0.communicate(timeout=600)
    assert node1.returncode == 0, node1.stderr[-3000:]
    assert node0.returncode == 0, node0_err[-3000:]
    one = run_stage(pretrain.STAGE, dict(config, nproc=1, grad_accum=2), {"shards": [shards]}, store)
    assert _max_weight_diff(_artifact(workdir, "tinynodes", "pretrain"), one) < 1e-5
