"""The CLI as a user runs it: real subprocesses, SIGKILL, concurrent runs, exit codes."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

RECIPE = """
[recipe]
name = "demo"
seed = 4

[stages.nums]
uses = "t_numbers"
count = 30

[stages.slow]
uses = "t_slow"
from = "nums"
steps = 40
sleep = 0.03
"""


def _recipe(tmp_path, text=RECIPE):
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


def _dsctl(dsctl_cmd, env, *args, check=True):
    proc = subprocess.run([*dsctl_cmd, *args], env=env, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"dsctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _files(workdir: Path, recipe: str, stage: str) -> dict:
    key = json.loads((workdir / "refs" / recipe / f"{stage}.json").read_text())["key"]
    return json.loads((workdir / "objects" / key / "manifest.json").read_text())["files"]


def test_sigkill_at_random_moments_then_run_completes_identically(tmp_path, cli_env, dsctl_cmd):
    recipe = _recipe(tmp_path)
    reference = tmp_path / "reference"
    _dsctl(dsctl_cmd, {**cli_env, "DSCTL_WORKDIR": str(reference)}, "run", str(recipe))
    rng = random.Random(1234)
    killed = tmp_path / "killed"
    env = {**cli_env, "DSCTL_WORKDIR": str(killed)}
    for _ in range(3):
        proc = subprocess.Popen([*dsctl_cmd, "run", str(recipe)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        staging = killed / "staging"
        deadline = time.time() + 60
        while not (staging.exists() and any(staging.iterdir())) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    out = _dsctl(dsctl_cmd, env, "run", str(recipe))
    assert "resuming" in out.stderr or "cached" in out.stderr
    assert _files(killed, "demo", "slow") == _files(reference, "demo", "slow")
    assert "0 damaged" in _dsctl(dsctl_cmd, env, "verify").stdout


def test_two_concurrent_runs_do_not_corrupt_the_store(tmp_path, cli_env, dsctl_cmd):
    recipe = _recipe(tmp_path)
    procs = [subprocess.Popen([*dsctl_cmd, "run", str(recipe)], env=cli_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    stderr = "\n".join(err for _, err in outs)
    # the slow stage is built once; the other process either waited for it or found it cached
    assert stderr.count("slow               done") == 1
    assert "waiting for pid" in stderr or stderr.count("slow               cached") == 1
    assert "0 damaged" in _dsctl(dsctl_cmd, cli_env, "verify").stdout


def test_bad_recipe_exits_2_with_one_sentence(tmp_path, cli_env, dsctl_cmd):
    recipe = _recipe(tmp_path, '[stages.a]\nuses = "t_numbers"\ncoutn = 3\n')
    proc = _dsctl(dsctl_cmd, cli_env, "run", str(recipe), check=False)
    assert proc.returncode == 2
    assert "unknown key 'coutn' (did you mean 'count'?)" in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr


def test_unknown_option_is_a_usage_error_not_a_traceback(tmp_path, cli_env, dsctl_cmd):
    recipe = _recipe(tmp_path)
    proc = _dsctl(dsctl_cmd, cli_env, "run", str(recipe), "--workdir", str(tmp_path / "w"), check=False)
    assert proc.returncode == 2
    assert "No such option: --workdir" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_failed_stage_exits_1_and_status_says_failed(tmp_path, cli_env, dsctl_cmd):
    text = '[stages.nums]\nuses = "t_numbers"\n[stages.up]\nuses = "t_upper"\nfrom = "nums"\nfail = true\n'
    recipe = _recipe(tmp_path, text)
    proc = _dsctl(dsctl_cmd, cli_env, "run", str(recipe), check=False)
    assert proc.returncode == 1 and "stage 'up' failed: RuntimeError: asked to fail" in proc.stderr
    status = _dsctl(dsctl_cmd, {**cli_env, "COLUMNS": "200"}, "status", str(recipe)).stdout
    assert "cached" in status and "failed" in status


def test_verify_finds_flipped_byte_and_gc_removes_unreferenced(tmp_path, cli_env, dsctl_cmd):
    recipe = _recipe(tmp_path, RECIPE.replace("steps = 40", "steps = 2"))
    _dsctl(dsctl_cmd, cli_env, "run", str(recipe))
    _dsctl(dsctl_cmd, cli_env, "run", str(recipe), "--set", "slow.steps=3")  # the old slow object is now unreferenced
    work = Path(cli_env["DSCTL_WORKDIR"])
    assert len(list((work / "objects").iterdir())) == 3
    dry = _dsctl(dsctl_cmd, cli_env, "gc", "--dry-run").stdout
    assert "would remove 1 object(s)" in dry and len(list((work / "objects").iterdir())) == 3
    assert "removed 1 object(s)" in _dsctl(dsctl_cmd, cli_env, "gc").stdout
    nums = next(p for p in (work / "objects").iterdir()
                if json.loads((p / "manifest.json").read_text())["stage"] == "t_numbers")
    shard = nums / "data" / "part-00000.jsonl"
    raw = bytearray(shard.read_bytes())
    raw[5] ^= 0x20
    shard.write_bytes(bytes(raw))
    proc = _dsctl(dsctl_cmd, cli_env, "verify", check=False)
    assert proc.returncode == 1 and "1 damaged" in proc.stdout


def test_stage_subcommand_runs_one_stage_into_the_store(tmp_path, cli_env, dsctl_cmd):
    first = _dsctl(dsctl_cmd, cli_env, "-q", "t_numbers", "--count", "5", "--seed", "2")
    path = Path(first.stdout.strip())
    assert (path / "manifest.json").exists()
    up = _dsctl(dsctl_cmd, cli_env, "-q", "t_upper", "--from", path.name[:10], "--set", "suffix='!'")
    rows = (Path(up.stdout.strip()) / "data" / "part-00000.jsonl").read_text().splitlines()
    assert len(rows) == 5 and json.loads(rows[0])["text"].endswith("!")
    assert first.stderr == "" and up.stderr == ""  # --quiet stays quiet


def test_every_command_has_help_with_an_example(cli_env, dsctl_cmd):
    for command in ("run", "status", "show", "ls", "verify", "gc"):
        out = _dsctl(dsctl_cmd, {**cli_env, "COLUMNS": "200"}, command, "--help").stdout
        assert "Example" in out, command
    out = _dsctl(dsctl_cmd, {**cli_env, "COLUMNS": "200"}, "t_upper", "--help").stdout
    assert "--suffix" in out and "Appended to every row" in out


def test_cli_start_up_does_not_import_torch(cli_env):
    """Stage modules import heavy libraries inside run(), so `dsctl --help` stays fast."""
    code = ("import sys, dsctl.cli.app; from dsctl.pipeline.stage import StageRegistry; StageRegistry.discover(); "
            "heavy = [m for m in ('torch', 'transformers', 'datasets') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_plot_draws_training_curves_to_png(tmp_path, cli_env, dsctl_cmd):
    _dsctl(dsctl_cmd, cli_env, "-q", "t_curve", "--steps", "6")
    _dsctl(dsctl_cmd, cli_env, "-q", "t_curve", "--steps", "9")
    work = Path(cli_env["DSCTL_WORKDIR"])
    keys = [p.name[:8] for p in (work / "objects").iterdir()]
    out = tmp_path / "curves.png"
    _dsctl(dsctl_cmd, cli_env, "plot", *keys, "--out", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_export_copies_a_checkpoint_and_checks_it_with_transformers(tmp_path, cli_env, dsctl_cmd):
    import torch

    from dsctl.model import DeepSeekV3, ModelConfig
    from dsctl.model.hf import save_hf

    torch.manual_seed(0)
    save_hf(DeepSeekV3(ModelConfig.preset("tiny")), tmp_path / "ckpt")
    proc = _dsctl(dsctl_cmd, cli_env, "export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"), "--check")
    assert "max |logit diff|" in proc.stdout
    assert {p.name for p in (tmp_path / "hf").iterdir()} == {"config.json", "model.safetensors"}
    again = _dsctl(dsctl_cmd, cli_env, "export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf"), check=False)
    assert again.returncode == 2 and "not empty" in again.stderr
