"""The sharded dedup job: a killed run resumes from its finished tasks and gives the bytes
of an uninterrupted one, and a real local Ray gives the bytes of local processes."""

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
from dsctl.data.executor import LocalExecutor

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
from dsctl.data.executor import LocalExecutor
src, work, out = map(Path, sys.argv[1:4])
slow = dedup._signature_task
def slowly(task):  # time for the test to kill the job between two shards
    slow(task)
    time.sleep(0.3)
dedup._signature_task = slowly
dedup.deduplicate(corpus_files(src), work, out, dedup.DedupParams(), LocalExecutor(1))
"""


def test_a_killed_job_resumes_from_its_finished_shards_and_gives_the_same_bytes(corpus, tmp_path):
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
    summary = deduplicate(sorted((corpus / "data").glob("*.jsonl")), work, out, DedupParams(), LocalExecutor(2))
    assert all((work / "done" / name).stat().st_mtime_ns == t for name, t in stamps.items())  # not redone
    assert summary.documents == 2400
    assert _outputs(out) == _outputs(whole)
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_ray_and_local_processes_give_byte_identical_artifacts(corpus, tmp_path):
    from dsctl.testing import run_stage
    from stages import dedup

    local = run_stage(dedup.STAGE, {"executor": "local", "workers": 2}, {"corpus": [corpus]}, tmp_path / "local")
    on_ray = run_stage(dedup.STAGE, {"executor": "ray", "workers": 2}, {"corpus": [corpus]}, tmp_path / "ray")
    assert _outputs(on_ray.path) == _outputs(local.path) and _outputs(local.path)
    assert on_ray.metrics["kept"] == local.metrics["kept"] and local.metrics["removed_near_duplicate"] > 100
