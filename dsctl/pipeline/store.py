"""The content-addressed work directory (docs/ARCHITECTURE.md, "Store").

    <root>/objects/<key>/     finished artifacts: files + manifest.json, never modified
    <root>/staging/<key>/     work in progress: artifact/ (becomes the object) + scratch/
    <root>/locks/<key>.lock   one writer per key (flock: released even on SIGKILL)
    <root>/refs/<recipe>/<stage>.json   which key a recipe's stage last resolved to
    <root>/runs/              one JSON record per `dsctl run`

A key is the sha256 of the canonical JSON of everything that determines the output:
stage type, format version, fully resolved config, input keys, seed. Publishing hashes
every file into the manifest, writes the manifest last, fsyncs, and renames the staging
directory into objects/ in one step, so a crash at any instant leaves either no object
or a whole one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from dsctl import __version__
from dsctl.errors import UserError
from dsctl.files import write_json_atomic

MANIFEST = "manifest.json"
KEY_LEN = 64


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def compute_key(stage: str, version: int, config: dict, inputs: dict[str, list[str]], seed: int,
                extra: Any = None) -> str:
    """The artifact key: same stage + version + config + inputs + seed => same key."""
    material = {"stage": stage, "version": version, "config": config, "inputs": inputs, "seed": seed}
    if extra is not None:
        material["extra"] = extra
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, dict[str, Any]]:
    """relative path -> {size, sha256} for every file below root except the manifest."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return files


def _fsync_tree(root: Path) -> None:
    for path in [*root.rglob("*"), root]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Artifact:
    """A finished artifact in the store, or a plain directory given by path."""

    path: Path
    key: str
    kind: str
    manifest: dict[str, Any]
    label: str = ""
    """How the user referred to it (e.g. "mini_r1:sft"); for reports."""

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})


@dataclass
class Staging:
    """The resumable workspace of one key."""

    root: Path

    @property
    def artifact(self) -> Path:
        return self.root / "artifact"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def failure_file(self) -> Path:
        return self.root / "failure.json"

    def exists(self) -> bool:
        return self.root.exists()


class Store:
    def __init__(self, root: Path | str):
        self.root = Path(root).resolve()
        for sub in ("objects", "staging", "locks", "refs", "runs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- paths --------------------------------------------------------------------------
    def object_path(self, key: str) -> Path:
        return self.root / "objects" / key

    def staging(self, key: str) -> Staging:
        return Staging(self.root / "staging" / key)

    def has(self, key: str) -> bool:
        return (self.object_path(key) / MANIFEST).is_file()

    def manifest(self, key: str) -> dict[str, Any]:
        return json.loads((self.object_path(key) / MANIFEST).read_text())

    def artifact(self, key: str, label: str = "") -> Artifact:
        manifest = self.manifest(key)
        return Artifact(self.object_path(key), key, manifest["kind"], manifest, label or key[:12])

    def keys(self) -> list[str]:
        return sorted(p.name for p in (self.root / "objects").iterdir() if (p / MANIFEST).is_file())

    def staging_keys(self) -> list[str]:
        return sorted(p.name for p in (self.root / "staging").iterdir() if p.is_dir())

    # -- locking ------------------------------------------------------------------------
    @contextmanager
    def lock(self, key: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the one writer's lock of `key`; wait (saying so) if another process has it."""
        path = self.root / "locks" / f"{key}.lock"
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                if on_wait:
                    on_wait(holder)
                fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
            try:
                yield
            finally:
                fh.truncate(0)
                fcntl.flock(fh, fcntl.LOCK_UN)

    def is_locked(self, key: str) -> bool:
        path = self.root / "locks" / f"{key}.lock"
        if not path.exists():
            return False
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False

    # -- publish ------------------------------------------------------------------------
    def publish(self, key: str, manifest: dict[str, Any]) -> Artifact:
        """Hash the staged artifact, write its manifest last, and move it into objects/."""
        staging = self.staging(key)
        src = staging.artifact
        full = {
            **manifest,
            "key": key,
            "dsctl_version": __version__,
            "files": hash_tree(src),
        }
        write_json_atomic(src / MANIFEST, full)
        _fsync_tree(src)
        dest = self.object_path(key)
        if dest.exists():  # an earlier publish of the same key crashed before cleanup
            shutil.rmtree(dest)
        os.replace(src, dest)
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        shutil.rmtree(staging.root, ignore_errors=True)
        return self.artifact(key)

    def remove(self, key: str) -> None:
        """Delete an object and its staging (used by --force and gc)."""
        for path in (self.object_path(key), self.staging(key).root):
            if path.exists():
                trash = path.with_name(path.name + f".trash{os.getpid()}")
                os.replace(path, trash)  # atomic: readers never see a half-deleted object
                shutil.rmtree(trash)

    # -- verification -------------------------------------------------------------------
    def verify(self, key: str) -> list[str]:
        """Problems found re-hashing an object (empty when it is intact)."""
        return verify_dir(self.object_path(key))

    # -- references ---------------------------------------------------------------------
    def set_ref(self, recipe: str, stage: str, record: dict[str, Any]) -> None:
        write_json_atomic(self.root / "refs" / recipe / f"{stage}.json", record)

    def get_ref(self, recipe: str, stage: str) -> dict[str, Any] | None:
        path = self.root / "refs" / recipe / f"{stage}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def resolve(self, ref: str, kind: str | None = None) -> Artifact:
        """An artifact by full key, unique key prefix, `recipe:stage`, or directory path."""
        if len(ref) == KEY_LEN and self.has(ref):
            return self.artifact(ref)
        if ":" in ref and not Path(ref).exists():
            recipe, stage = ref.split(":", 1)
            record = self.get_ref(recipe, stage)
            if record is None:
                raise UserError(f"no artifact is recorded for '{ref}'; run the recipe '{recipe}' first")
            if not self.has(record["key"]):
                raise UserError(f"'{ref}' pointed to {record['key'][:12]}, which is no longer in the store")
            return self.artifact(record["key"], label=ref)
        path = Path(ref)
        if path.is_dir():
            return artifact_from_path(path, kind)
        matches = [k for k in self.keys() if k.startswith(ref)] if len(ref) >= 4 else []
        if len(matches) == 1:
            return self.artifact(matches[0])
        if len(matches) > 1:
            raise UserError(f"key prefix '{ref}' is ambiguous ({len(matches)} artifacts); give more characters")
        raise UserError(f"'{ref}' is not an artifact key, key prefix, recipe:stage or directory")

    # -- run records --------------------------------------------------------------------
    def new_run_record(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        return self.root / "runs" / f"{stamp}-{os.getpid()}.json"


def verify_dir(root: Path) -> list[str]:
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        return [f"{root}: no {MANIFEST}"]
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        return [f"{manifest_path}: unreadable manifest ({exc})"]
    problems = []
    for rel, meta in manifest.get("files", {}).items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != meta["size"]:
            problems.append(f"{rel}: size {path.stat().st_size} != {meta['size']}")
        elif sha256_file(path) != meta["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    extra = set(hash_tree(root)) - set(manifest.get("files", {}))
    problems.extend(f"{rel}: not in manifest" for rel in sorted(extra))
    return problems


def artifact_from_path(path: Path, kind: str | None) -> Artifact:
    """A directory given by path: a copied store object (has a manifest) or plain files.

    Plain directories get a key from the hash of their contents, so caching still works
    and edited files give a new key.
    """
    path = path.resolve()
    if (path / MANIFEST).is_file():
        problems = verify_dir(path)
        if problems:
            raise UserError(f"{path} is damaged: {problems[0]}")
        manifest = json.loads((path / MANIFEST).read_text())
        return Artifact(path, manifest["key"], manifest["kind"], manifest, str(path))
    if kind is None:
        raise UserError(f"{path} has no {MANIFEST}; say what it is with SLOT=PATH")
    files = hash_tree(path)
    if not files:
        raise UserError(f"{path} is an empty directory")
    key = hashlib.sha256(canonical_json({"kind": kind, "files": files}).encode()).hexdigest()
    manifest = {"kind": kind, "key": key, "files": files, "source_path": str(path)}
    return Artifact(path, key, kind, manifest, str(path))
