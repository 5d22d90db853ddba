"""Pipeline schedules as data: which op each rank runs, in which order.

A schedule is a list of *slots* per rank. A slot holds one op, or two ops (a forward
and a backward) that the schedule means to run overlapped, as DualPipe does. The same
schedule object drives both the cost simulator (``schedule_sim.py``) and the real
multi-process executor (``pipeline.py``), so what we measure in simulation is exactly
the order the processes run.

Vocabulary (DeepSeek-V3 report §3.2.1 / Zero Bubble PP):

- ``F``: forward of one micro-batch through one stage.
- ``B``: backward of that stage; with ``split=True`` only the input gradient ("backward
  for input"), the weight gradient being deferred to a later ``W``.
- ``W``: "backward for weights" of a previously split ``B``.

Micro-batches carry *global* ids: a direction-1 micro-batch of DualPipe is numbered
after all direction-0 ones, so ``inputs.tensor_split(M)[mb]`` is always its data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class OpKind(str, enum.Enum):
    """What a pipeline op computes."""

    F = "F"
    B = "B"
    W = "W"


@dataclass(frozen=True)
class Op:
    """One unit of pipeline work on one rank."""

    kind: OpKind
    """Forward, backward (input grad, plus weight grad unless ``split``), or weight grad."""
    direction: int
    """Pipeline direction: 0 enters at rank 0, 1 (DualPipe only) enters at the last rank."""
    stage: int
    """Model stage index along the direction, 0 = the stage that embeds the input."""
    microbatch: int
    """Global micro-batch id (index into the step's micro-batch split)."""
    split: bool = False
    """For ``B`` only: compute the input gradient now and defer the weight gradient to a ``W``."""

    def __str__(self) -> str:
        tag = "b" if self.kind is OpKind.B and self.split else self.kind.value
        return f"{tag}{self.direction}.{self.microbatch}"


Slot = tuple[Op, ...]
"""One op, or an overlapped (forward, backward) pair."""


@dataclass
class PipelineSchedule:
    """The per-rank op order of one training step."""

    name: str
    """Schedule name for reports (``"1F1B"``, ``"DualPipe"``)."""
    num_ranks: int
    """Pipeline-parallel ranks."""
    num_stages: int
    """Stages each micro-batch passes through (equals ``num_ranks`` for both schedules here)."""
    num_microbatches: int
    """Micro-batches per step, over all directions."""
    num_directions: int
    """1 for classic schedules, 2 for DualPipe."""
    rank_slots: list[list[Slot]] = field(default_factory=list)
    """``rank_slots[r]`` is rank ``r``'s ordered list of slots."""

    def rank_of(self, direction: int, stage: int) -> int:
        """The rank that runs ``stage`` for micro-batches of ``direction``."""
        return stage if direction == 0 else self.num_ranks - 1 - stage

    def microbatches_of(self, direction: int) -> range:
        """Global ids of the micro-batches that travel in ``direction``."""
        per_dir = self.num_microbatches // self.num_directions
        return range(direction * per_dir, (direction + 1) * per_dir)

    def validate(self) -> None:
        """Raise ``ValueError`` unless every (direction, stage, micro-batch) gets exactly one
        F and one B on its rank, each split B exactly one later W, and F precedes B."""
        for rank, slots in enumerate(self.rank_slots):
            seen: dict[tuple[OpKind, int, int], int] = {}
            ops = [op for slot in slots for op in slot]
            for pos, op in enumerate(ops):
                if self.rank_of(op.direction, op.stage) != rank:
                    raise ValueError(f"{self.name}: {op} of stage {op.stage} placed on rank {rank}")
                key = (op.kind, op.direction, op.microbatch)
                if key in seen:
                    raise ValueError(f"{self.name}: rank {rank} runs {op} twice")
                seen[key] = pos
                if op.kind is OpKind.B and (OpKind.F, op.direction, op.microbatch) not in seen:
                    raise ValueError(f"{self.name}: rank {rank} runs {op} before its forward")
                if op.kind is OpKind.W and (OpKind.B, op.direction, op.microbatch) not in seen:
                    raise ValueError(f"{self.name}: rank {rank} runs {op} before its backward")
            for direction in range(self.num_directions):
                for mb in self.microbatches_of(direction):
                    for kind in (OpKind.F, OpKind.B):
                        if (kind, direction, mb) not in seen:
                            raise ValueError(f"{self.name}: rank {rank} never runs {kind.value}{direction}.{mb}")
            split_bs = sum(1 for op in ops if op.kind is OpKind.B and op.split)
            ws = sum(1 for op in ops if op.kind is OpKind.W)
            if split_bs != ws:
                raise ValueError(f"{self.name}: rank {rank} has {split_bs} split backwards but {ws} W ops")

    def render(self) -> str:
        """One line per rank, slots separated by spaces, overlapped pairs joined by '+'."""
        lines = []
        for rank, slots in enumerate(self.rank_slots):
            cells = ["+".join(str(op) for op in slot) for slot in slots]
            lines.append(f"rank {rank}: " + " ".join(cells))
        return "\n".join(lines)
