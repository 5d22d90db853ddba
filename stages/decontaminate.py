"""decontaminate: drop training documents that contain eval text (n-gram overlap).

Reads a corpus, writes a corpus:

    data/part-NNNNN.jsonl       documents that share no n-gram with any eval text
    rejected/part-NNNNN.jsonl   the others, with reason "contaminated" and `eval_id`
    planted.jsonl               copied through if the input has one

One task per input shard NNNNN, on local processes or Ray (`executor`), same bytes
either way; a killed run resumes from its finished shards.

Eval text comes from the dev and test splits of the reasoning tasks (`dsctl.tasks`:
prompt and worked solution of every dev and test problem of each family at each of
`eval_difficulties`; for a family that cannot list its problems, the first
`eval_problems_per_family` of each split's draw, which is the same at every seed) and
from any JSONL/Parquet files named in `eval_files`.

Matching (dsctl/data/decontaminate.py): text is compared as casefolded word and
punctuation tokens. A document is contaminated when it contains any `n`-token window of
an eval-file text, or, for an eval text shorter than `n` tokens, that whole text. Task
problems are generated from templates, so their n-token windows recur across different
problems; they are matched whole (the document must contain the entire prompt or the
entire worked solution). Windows shared by more than `max_shared` distinct eval items
are template text and are not used.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dsctl.configs import stage_defaults
from dsctl.data.audit import carry_planted
from dsctl.data.config import DataWorkConfig
from dsctl.data.corpus import ReadStats, corpus_files, expand_paths, remove_partial_parts
from dsctl.data.decontaminate import (
    DecontaminateJob,
    NgramIndex,
    decontaminate_shard,
    file_eval_texts,
    problem_set_eval_texts,
    task_eval_texts,
)
from dsctl.data.executor import executor_for
from dsctl.data.jobs import StepBars, run_tasks
from dsctl.data.shards import file_sha256
from dsctl.errors import UserError
from dsctl.pipeline.stage import Input, StageContext, StageSpec
from dsctl.tasks import FAMILIES
from dsctl.tasks.config import FamiliesConfig, check_split_sizes


@dataclass
@stage_defaults(families=sorted(FAMILIES), workers=1, docs_per_batch=1024)
class DecontaminateConfig(FamiliesConfig, DataWorkConfig):
    n: int = 13
    """Window length in tokens (casefolded words and punctuation marks)."""
    eval_problems_per_family: int = 2000
    """Families that cannot list their problems (countdown) protect this many of their dev
    and of their test draw, which covers any stage scoring as many or fewer (the draws are
    the same at every seed); the others protect their whole dev and test splits."""
    eval_difficulties: list[dict[str, dict[str, Any]]] = field(
        default_factory=lambda: [{}]
    )
    """Difficulty override sets (family -> knobs, as eval/sft/grpo take) whose dev and test
    problems are protected; the default covers the families' defaults, which eval uses."""
    eval_files: list[str] = ()
    """JSONL/Parquet files or globs of other eval sets (a text field per row)."""
    eval_text_field: str = "text"
    """Field holding the text in `eval_files`."""
    max_shared: int = 1
    """A window shared by more than this many distinct eval items is template text and ignored."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.eval_files = list(self.eval_files)
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.eval_problems_per_family < 0:
            raise ValueError("eval_problems_per_family must be >= 0")
        unlisted = [f for f in self.families if FAMILIES[f].enumerate is None]
        for difficulty in self.eval_difficulties:
            for split in ("dev", "test"):
                check_split_sizes("eval_problems_per_family", unlisted, split,
                                  [self.eval_problems_per_family] * len(unlisted), difficulty)


def eval_index(cfg: DecontaminateConfig, problem_sets: list[Any] = ()) -> tuple[NgramIndex, dict[str, str]]:
    """The n-gram index of every eval text the config and the problem sets name, and each
    eval id's source."""
    texts = [t for ps in problem_sets for t in problem_set_eval_texts(ps)]
    for difficulty in cfg.eval_difficulties or [{}]:
        try:
            texts += task_eval_texts(cfg.families, cfg.eval_problems_per_family, difficulty)
        except ValueError as exc:
            raise UserError(f"eval_difficulties {difficulty}: {exc}") from None
    texts = list(dict.fromkeys(texts))  # a family a variant does not override repeats the default
    if cfg.eval_files:
        texts += list(file_eval_texts(expand_paths(cfg.eval_files), cfg.eval_text_field))
    if not texts:
        raise UserError("decontaminate has no eval text: set families or eval_files")
    return NgramIndex.build(texts, cfg.n, cfg.max_shared), {t.id: t.source for t in texts}


def run(ctx: StageContext) -> dict:
    cfg: DecontaminateConfig = ctx.config
    source = ctx.input("corpus")
    files = corpus_files(source.path)
    if not files:
        raise UserError(f"{source.path}: no JSONL/Parquet files under data/ to decontaminate")
    from dsctl.tasks.problem_set import ProblemSet

    index, source_of = eval_index(cfg, [ProblemSet(a.path) for a in ctx.inputs_of("problems")])
    tasks = [DecontaminateJob(index=i, path=path, out=ctx.out, ngrams=index, batch_size=cfg.docs_per_batch)
             for i, path in enumerate(files)]
    with executor_for(cfg) as executor, \
            StepBars(ctx) as progress:
        results = run_tasks(executor, ctx.scratch / "decontaminate", "match", decontaminate_shard, tasks, progress)
    remove_partial_parts(ctx.out)
    stats, by_source = ReadStats(), Counter()
    for result in results:
        stats.merge(ReadStats(**result["read"]))
        for eval_id, n in result["caught"].items():
            by_source[source_of[eval_id]] += n
    carry_planted(source.path, ctx.out)
    contaminated = sum(by_source.values())
    ctx.info(f"removed {contaminated:,} contaminated of {stats.rows:,} documents ({len(index):,} eval texts)")
    return {
        "contaminated": contaminated,
        "kept": stats.rows - contaminated,
        "documents": stats.rows,
        "eval_texts": len(index),
        "template_windows_ignored": index.templates,
        **{f"contaminated_{name}": count for name, count in sorted(by_source.items())},
        **stats.as_dict(),
    }


def fingerprint(cfg: DecontaminateConfig) -> dict:
    """Eval files are outside the store: their content is part of the key."""
    if not cfg.eval_files:
        return {}
    return {str(p): file_sha256(p) for p in expand_paths(cfg.eval_files)}


STAGE = StageSpec(
    name="decontaminate",
    version=1,
    config=DecontaminateConfig,
    run=run,
    output="corpus",
    inputs={"corpus": Input("corpus", help="the corpus to decontaminate"),
            "problems": Input("problems", many=True, optional=True,
                              help="problem sets whose dev and test problems are protected too")},
    help="Remove training documents that contain eval text: task eval problems matched whole, "
    "other eval sets by shared n-token windows (default 13).",
    fingerprint=fingerprint,
    example="dsctl decontaminate --from mini_r1:dedup --set n=13",
)
