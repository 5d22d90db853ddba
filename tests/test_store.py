import json
import os

import pytest

from dsctl.errors import UserError
from dsctl.pipeline.store import Store, compute_key, verify_dir


def _publish(store, key, files):
    staging = store.staging(key)
    staging.artifact.mkdir(parents=True)
    for name, text in files.items():
        path = staging.artifact / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return store.publish(key, {"stage": "t", "kind": "corpus"})


def test_key_is_canonical_and_covers_every_input():
    base = dict(stage="clean", version=1, config={"a": 1, "b": [1, 2]}, inputs={"corpus": ["k1"]}, seed=0)
    key = compute_key(**base)
    assert key == compute_key(**{**base, "config": {"b": [1, 2], "a": 1}})  # key order irrelevant
    for change in ({"stage": "dedup"}, {"version": 2}, {"config": {"a": 2, "b": [1, 2]}},
                   {"inputs": {"corpus": ["k2"]}}, {"seed": 1}):
        assert compute_key(**{**base, **change}) != key


def test_publish_moves_whole_artifact_with_manifest_last(tmp_path):
    store = Store(tmp_path)
    art = _publish(store, "a" * 64, {"data/x.jsonl": "hello\n", "b.txt": "b"})
    assert store.has("a" * 64)
    assert not store.staging("a" * 64).exists()
    manifest = json.loads((art.path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"data/x.jsonl", "b.txt"}
    assert manifest["files"]["b.txt"]["size"] == 1
    assert manifest["key"] == "a" * 64 and manifest["dsctl_version"]


def test_verify_finds_a_flipped_byte(tmp_path):
    store = Store(tmp_path)
    art = _publish(store, "b" * 64, {"data.bin": "abcdef" * 100})
    assert store.verify("b" * 64) == []
    path = art.path / "data.bin"
    raw = bytearray(path.read_bytes())
    raw[123] ^= 0x01
    path.write_bytes(bytes(raw))
    assert store.verify("b" * 64) == ["data.bin: sha256 mismatch"]


def test_verify_reports_missing_and_extra_files(tmp_path):
    store = Store(tmp_path)
    art = _publish(store, "c" * 64, {"a.txt": "a", "b.txt": "b"})
    (art.path / "a.txt").unlink()
    (art.path / "stray.txt").write_text("x")
    problems = verify_dir(art.path)
    assert "a.txt: missing" in problems and "stray.txt: not in manifest" in problems


def test_resolve_by_key_prefix_ref_and_path(tmp_path):
    store = Store(tmp_path / "w")
    key = "d" * 30 + "e" * 34
    _publish(store, key, {"x": "1"})
    _publish(store, "d" * 30 + "f" * 34, {"x": "2"})
    assert store.resolve(key).key == key
    assert store.resolve("d" * 30 + "e").key == key
    with pytest.raises(UserError, match="ambiguous"):
        store.resolve("dddd")
    store.set_ref("demo", "clean", {"key": key})
    assert store.resolve("demo:clean").key == key
    with pytest.raises(UserError, match="run the recipe"):
        store.resolve("demo:nothing")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "rows.jsonl").write_text('{"id": "1", "text": "x"}\n')
    first = store.resolve(str(plain), "corpus")
    assert first.kind == "corpus" and len(first.key) == 64
    (plain / "rows.jsonl").write_text('{"id": "1", "text": "y"}\n')
    assert store.resolve(str(plain), "corpus").key != first.key  # edited files => new key
    with pytest.raises(UserError, match="not an artifact"):
        store.resolve("zzzz-nothing")


def test_lock_excludes_a_second_process(tmp_path):
    store = Store(tmp_path)
    with store.lock("k" * 64):
        assert store.is_locked("k" * 64)
        pid = os.fork()
        if pid == 0:  # child: a non-blocking attempt must fail while the parent holds it
            import fcntl

            with open(tmp_path / "locks" / ("k" * 64 + ".lock"), "a+") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    os._exit(1)
                except BlockingIOError:
                    os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
    assert not store.is_locked("k" * 64)
