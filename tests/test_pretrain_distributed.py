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
from dsctl.pipeline.testing import run_stage
from dsctl.train.artifacts import check_hf_export
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
# What a DeepSeek-V3 run has: MTP, packed-document masks, the balance loss (weighted up to
# be visible), four layers for four stages.
V3_RUN = dict(SMALL_RUN, lr=3e-3, max_steps=5, grad_accum=8, mtp_depth=1, doc_masking=True, checkpoint_every=5,
              model_overrides={"num_hidden_layers": 4, "seq_aux_loss_alpha": 0.01})


def _toml_value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def _toml(values: dict) -> str:
    return "\n".join(f"{k} = {_toml_value(v)}" for k, v in values.items())


def _dsctl(dsctl_cmd, cli_env, workdir: Path, recipe: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in cli_env.items() if k != "DSCTL_PLUGINS"}
    return subprocess.run([*dsctl_cmd, "run", str(recipe), *extra], env={**env, "DSCTL_WORKDIR": str(workdir)},
                          capture_output=True, text=True, timeout=900)


def _artifact(workdir: Path, recipe: str, stage: str) -> Path:
    key = json.loads((workdir / "refs" / recipe / f"{stage}.json").read_text())["key"]
    return workdir / "objects" / key


def _weights(artifact) -> dict[str, torch.Tensor]:
    """Every tensor of an exported checkpoint, one file or sharded."""
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(getattr(artifact, "path", artifact)).glob("model*.safetensors")):
        weights.update(load_file(str(shard)))
    return weights


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


def test_parallel_settings_that_cannot_run_are_refused_before_any_process_starts(tokenized, store):
    _, shards = tokenized
    bad = dict(SMALL_RUN, max_steps=1, nproc=3, pipeline="dualpipe", grad_accum=2)
    with pytest.raises(UserError) as caught:
        run_stage(pretrain.STAGE, bad, {"shards": [shards]}, store)
    for expected in ("even nproc", ">= 2 × nproc = 6", "2 decoder layers cannot fill 3 pipeline stages"):
        assert expected in str(caught.value), str(caught.value)
    with pytest.raises(UserError, match="nproc=3 must be a multiple of expert_parallel=2"):
        run_stage(pretrain.STAGE, dict(SMALL_RUN, nproc=3, expert_parallel=2), {"shards": [shards]}, store)


def test_parallel_config_problems_name_the_fields_and_the_fix():
    from dsctl.train.parallel_config import parallel_config_problems

    def problems(**values):
        return parallel_config_problems(pretrain.PretrainConfig(**dict(PIPELINE_RUN, **values)))

    assert problems(nproc=2, pipeline="dualpipe") == []
    assert problems(nproc=2, pipeline="1f1b", mtp_depth=1, doc_masking=True, precision="fp8") == []
    assert problems(nproc=4, expert_parallel=2) == []
    assert problems(nproc=4, expert_parallel=3) == [
        "nproc=4 must be a multiple of expert_parallel=3 (every group of 3 ranks holds all experts once): "
        "set nproc to 3",
        "the model's 8 routed experts cannot be split evenly over expert_parallel=3 ranks: "
        "pick a degree that divides 8"]
    assert "set pipeline = \"none\"" in problems(nproc=2, expert_parallel=2, pipeline="1f1b")[0]
    assert "set model_overrides = {num_hidden_layers = 4}" in problems(nproc=4, pipeline="1f1b")[0]


def _rows(artifact) -> list[dict]:
    return [json.loads(line) for line in (artifact.path / "metrics.jsonl").read_text().splitlines()]


def _relative_loss_gaps(piped, one) -> list[float]:
    rows, single = _rows(piped), _rows(one)
    assert [r["step"] for r in rows] == [r["step"] for r in single] == list(range(1, len(single) + 1))
    return [abs(r["loss"] - s["loss"]) / abs(s["loss"]) for r, s in zip(rows, single)]


@pytest.mark.parametrize("schedule, nproc, precision, tolerance", [
    ("1f1b", 2, "fp32", 1e-5),
    ("dualpipe", 2, "fp32", 1e-5),
    ("1f1b", 2, "fp8", 1e-3),
    ("dualpipe", 2, "fp8", 1e-3),
], ids=["1f1b-fp32", "dualpipe-fp32", "1f1b-fp8", "dualpipe-fp8"])
@pytest.mark.slow
def test_pipeline_with_mtp_doc_masks_and_fp8_matches_one_process_step_by_step(tokenized, store, schedule, nproc,
                                                                            precision, tolerance):
    _, shards = tokenized
    config = dict(V3_RUN, precision=precision)
    piped = run_stage(pretrain.STAGE, dict(config, nproc=nproc, pipeline=schedule), {"shards": [shards]}, store)
    one = run_stage(pretrain.STAGE, config, {"shards": [shards]}, store)
    assert max(_relative_loss_gaps(piped, one)) <= tolerance
    rows, single = _rows(piped), _rows(one)
    for key in ("lm_loss", "mtp_loss", "balance_loss"):
        assert [r[key] for r in rows] == pytest.approx([s[key] for s in single], rel=tolerance * 10, abs=1e-7)
    assert all(r["mtp_loss"] > 0 and r["balance_loss"] > 0 for r in rows)
    assert piped.metrics["val_loss"] == pytest.approx(one.metrics["val_loss"], rel=tolerance * 10)
    # fp32: losses agree to 1e-5 at every step; AdamW's update (~lr per weight whatever the
    # gradient's size) lets reduction-order differences in near-zero gradients move a few
    # weights by a fraction of lr = 1e-2
    assert _max_weight_diff(piped, one) < (1e-3 if precision == "fp32" else 1e-2)


@pytest.mark.slow
def test_four_pipeline_ranks_hold_a_quarter_of_the_layers_each(tokenized, store):
    _, shards = tokenized
    piped = run_stage(pretrain.STAGE, dict(V3_RUN, nproc=4, pipeline="1f1b"), {"shards": [shards]}, store)
    dual = run_stage(pretrain.STAGE, dict(V3_RUN, nproc=4, pipeline="dualpipe"), {"shards": [shards]}, store)
    one = run_stage(pretrain.STAGE, V3_RUN, {"shards": [shards]}, store)
    assert max(_relative_loss_gaps(piped, one)) <= 1e-5
    assert max(_relative_loss_gaps(dual, one)) <= 1e-5
    from dsctl.model import DeepSeekV3, ModelConfig

    torch.manual_seed(0)
    model = DeepSeekV3(ModelConfig.preset("tiny", vocab_size=400, num_nextn_predict_layers=1,
                                          **V3_RUN["model_overrides"]))
    sizes = {name: sum(p.numel() for p in getattr(model, name).parameters())
             for name in ("embed_tokens", "lm_head", "norm")}
    layer = [sum(p.numel() for p in layer.parameters()) for layer in model.layers]
    mtp = sum(p.numel() for p in model.mtp.parameters())
    # 1F1B: one layer each; the embedding on rank 0; head, norm, MTP and a tied embedding copy on rank 3
    assert piped.metrics["params_per_rank"] == [
        sizes["embed_tokens"] + layer[0], layer[1], layer[2],
        layer[3] + sizes["norm"] + sizes["lm_head"] + mtp + sizes["embed_tokens"]]
    # DualPipe: rank r holds stages r and 3 - r
    ends = sum(piped.metrics["params_per_rank"][i] for i in (0, 3)) - sizes["embed_tokens"]
    assert dual.metrics["params_per_rank"] == [ends, layer[1] + layer[2], layer[1] + layer[2], ends]
    assert len(piped.metrics["peak_rss_mb_per_rank"]) == 4 and len(dual.metrics["idle_s_per_rank"]) == 4
    shards_written = sorted(p.name for p in piped.path.glob("model-*.safetensors"))
    assert shards_written == [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
    from dsctl.model.hf import load_hf

    merged = load_hf(piped.path)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in model.parameters())
    assert check_hf_export(piped.path)["max_logit_diff"] < 1e-4


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
    ("tinydualpipe", dict(V3_RUN, max_steps=6, checkpoint_every=2, nproc=2, pipeline="dualpipe")),
    ("tinyexperts", dict(V3_RUN, max_steps=6, checkpoint_every=2, nproc=2, expert_parallel=2, grad_accum=2)),
], ids=["data-parallel", "dualpipe", "expert-parallel"])
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
        files = sorted(_artifact(workdir, name, "pretrain").glob("model*.safetensors"))
        return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]

    assert digest(killed) == digest(reference)
    metrics = (_artifact(killed, name, "pretrain") / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in metrics] == list(range(1, 7))


@pytest.mark.slow
def test_a_failing_rank_is_reported_with_its_message(tokenized, store):
    _, shards = tokenized
    # within the model's context and memory (checked before the run), past the held-out
    # tokens, which only a rank finds out
    too_long = dict(SMALL_RUN, max_steps=1, nproc=2, batch_size=1, seq_len=10_000,
                    model_overrides={"max_position_embeddings": 10_000})
    with pytest.raises(Exception, match=r"rank \d: .*fewer than one sequence of seq_len=10000"):
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


@pytest.mark.slow
@pytest.mark.parametrize("nproc, degree", [(2, 2), (4, 2)], ids=["2-ranks-E2", "4-ranks-E2"])
def test_expert_parallel_equals_one_process_with_all_ranks_micro_batches(tokenized, store, nproc, degree):
    _, shards = tokenized
    config = dict(V3_RUN, max_steps=4, checkpoint_every=4)
    sharded = run_stage(pretrain.STAGE, dict(config, nproc=nproc, expert_parallel=degree, grad_accum=2),
                        {"shards": [shards]}, store)
    one = run_stage(pretrain.STAGE, dict(config, grad_accum=2 * nproc), {"shards": [shards]}, store)
    assert max(_relative_loss_gaps(sharded, one)) <= 1e-5
    assert _max_weight_diff(sharded, one) < 1e-4
    assert [r["max_load_violation"] for r in _rows(sharded)] == [r["max_load_violation"] for r in _rows(one)]
    from dsctl.model import DeepSeekV3, ModelConfig

    model_config = ModelConfig.preset("tiny", vocab_size=400, num_nextn_predict_layers=1, **V3_RUN["model_overrides"])
    with torch.device("meta"):
        model = DeepSeekV3(model_config)
    experts = sum(p.numel() for m in model.moe_layers() for p in m.experts.parameters())
    whole = sum(p.numel() for p in model.parameters())
    assert sharded.metrics["params_per_rank"] == [whole - experts + experts // degree] * nproc
