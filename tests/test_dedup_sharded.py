"""The sharded data jobs: a SIGKILLed dedup resumes from its finished tasks (on local
processes or on Ray) and gives the bytes of an uninterrupted run, and a real local Ray
gives the bytes of local processes in all four data stages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.dedup_corpus import synthetic_corpus
from dsctl.data.corpus import ShardWriter
from dsctl.data.dedup import DedupParams, deduplicate
from dsctl.data.executor import LocalExecutor, open_executor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rows, planted = synthetic_corpus(2400, seed=3)
    src = tmp_path_factory.mktemp("sharded") / "src"
    with ShardWriter(src / "data", 200) as writer:  # 12 input shards
        for row in rows:
            writer.write(row)
    (src / "planted.jsonl").write_text("".join(json.dumps(p) + "\n" for p in planted))
    return src


def _outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("*/*.jsonl"))}


JOB = """
import sys, time
from pathlib import Path
from dsctl.data import dedup
from dsctl.data.corpus import corpus_files
from dsctl.data.executor import LocalExecutor, open_executor
src, work, out = map(Path, sys.argv[1:4])
slow = dedup._signature_task
def slowly(task):  # time for the test to kill the job between two shards
    slow(task)
    time.sleep(0.3)
dedup._signature_task = slowly
dedup.deduplicate(corpus_files(src), work, out, dedup.DedupParams(), LocalExecutor(1))
"""


@pytest.mark.parametrize("resume_on", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_a_killed_job_resumes_from_its_finished_shards_and_gives_the_same_bytes(corpus, tmp_path, resume_on):
    whole = tmp_path / "whole"
    deduplicate(sorted((corpus / "data").glob("*.jsonl")), whole / "work", whole, DedupParams(), LocalExecutor(1))
    work, out = tmp_path / "work", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen([sys.executable, "-c", JOB, str(corpus), str(work), str(out)], env=env)
    deadline = time.time() + 120
    while not (work / "done" / "signatures-00003.json").exists() and time.time() < deadline:
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    finished = sorted(p.name for p in (work / "done").iterdir())
    assert finished and len(finished) < 12, finished  # killed part-way through the first step
    stamps = {name: (work / "done" / name).stat().st_mtime_ns for name in finished}
    with open_executor(resume_on, workers=2) as executor:
        summary = deduplicate(sorted((corpus / "data").glob("*.jsonl")), work, out, DedupParams(), executor)
    assert all((work / "done" / name).stat().st_mtime_ns == t for name, t in stamps.items())  # not redone
    assert summary.documents == 2400
    assert _outputs(out) == _outputs(whole)
    assert not list(out.rglob("*.tmp"))


def _artifact_files(root: Path) -> dict[str, bytes]:
    """Every file of an artifact but its manifest and metrics (they hold timings)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "metrics.jsonl")}


@pytest.mark.slow
def test_ray_and_local_processes_give_byte_identical_artifacts_in_all_four_data_stages(corpus, tmp_path):
    import ray

    from dsctl.pipeline.testing import run_stage
    from stages import clean, decontaminate, dedup, tokenize

    chain = [  # each stage reads the one before; synthetic words are no language: langid off
        (clean.STAGE, {"langid_threshold": 0.0, "min_stop_words": 0, "min_line_punctuation_fraction": 0.0}),
        (dedup.STAGE, {}),
        (decontaminate.STAGE, {}),
        (tokenize.STAGE, {"vocab_size": 400}),
    ]
    outputs: dict[str, list] = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # one local Ray for every stage
    try:
        for executor in ("local", "ray"):
            upstream = corpus
            for spec, config in chain:
                artifact = run_stage(spec, {**config, "executor": executor, "workers": 2}, {"corpus": [upstream]},
                                     tmp_path / executor)
                outputs.setdefault(executor, []).append((spec.name, _artifact_files(artifact.path), artifact.metrics))
                upstream = artifact.path
    finally:
        ray.shutdown()
    for (name, local_files, _), (_, ray_files, _) in zip(outputs["local"], outputs["ray"]):
        assert ray_files == local_files and local_files, name
    names = [name for name, _, _ in outputs["local"]]
    metrics = {name: m for name, _, m in outputs["local"]}
    assert names == ["clean", "dedup", "decontaminate", "tokenize"]
    assert metrics["dedup"]["removed_near_duplicate"] > 100 and metrics["tokenize"]["train_tokens"] > 10_000


def test_an_unknown_executor_is_a_user_error_naming_the_choices(corpus, tmp_path):
    from dsctl.errors import UserError
    from dsctl.pipeline.testing import run_stage
    from stages import dedup

    with pytest.raises(UserError, match="executor must be one of local, ray, got 'spark'"):
        run_stage(dedup.STAGE, {"executor": "spark"}, {"corpus": [corpus]}, tmp_path / "work")
