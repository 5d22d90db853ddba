"""Train a DeepSeekV3 preset with DualPipe or 1F1B pipeline parallelism under torchrun.

    torchrun --standalone --nproc-per-node 4 examples/pipeline_demo.py --schedule dualpipe
    torchrun --standalone --nproc-per-node 2 examples/pipeline_demo.py --schedule 1f1b --steps 20

An example of the parallel building blocks on their own; dsctl's training stages run the
same schedules through `pretrain --set pipeline=...`. Every rank builds the same model
(same seed), keeps its pipeline stage(s), and takes AdamW steps on a fixed batch of random
tokens (so the loss must fall: a smoke test of the whole distributed path). The rank
holding the loss prints one JSON line per step.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import torch

from dsctl.model import DeepSeekV3, ModelConfig
from dsctl.parallel.dist import distributed
from dsctl.parallel.dualpipe import DualPipe
from dsctl.parallel.onef1b import OneF1B
from dsctl.parallel.pipeline_stages import split_deepseek_v3, stage_kwargs


@dataclass
class DemoConfig:
    """Knobs of the pipeline demo."""

    schedule: str = "dualpipe"
    """"dualpipe" (needs an even world size) or "1f1b"."""
    preset: str = "tiny"
    """dsctl.model preset; its num_hidden_layers must be >= the world size."""
    steps: int = 10
    """Optimizer steps."""
    microbatches: int = 0
    """Micro-batches per step; 0 picks 2 x world size (DualPipe's minimum)."""
    batch_size: int = 16
    """Sequences per step, split over the micro-batches."""
    seq_len: int = 32
    """Tokens per sequence."""
    lr: float = 3e-3
    """AdamW learning rate."""
    seed: int = 0
    """Seed of the model and the token batch (identical on every rank)."""


def run(cfg: DemoConfig) -> list[float]:
    """Run the demo in a torchrun-launched job; returns the losses on the rank that prints them."""
    with distributed() as info:
        world = info.world_size
        if world < 2:
            raise RuntimeError("the pipeline demo needs at least 2 processes: "
                               "torchrun --standalone --nproc-per-node 2 examples/pipeline_demo.py")
        torch.manual_seed(cfg.seed)
        layers = max(world, ModelConfig.preset(cfg.preset).num_hidden_layers)
        # No MTP: its embedding copy on the last stage needs the tied-gradient sum that
        # `dsctl pretrain`'s PipelineStep does; this demo exercises the schedules alone.
        config = ModelConfig.preset(cfg.preset, num_hidden_layers=layers, num_nextn_predict_layers=0)
        model = DeepSeekV3(config).to(info.device).train()
        stages = split_deepseek_v3(model, world)
        if cfg.schedule == "dualpipe":
            chunks = (stages[info.rank], stages[world - 1 - info.rank])
            pipe: DualPipe | OneF1B = DualPipe(chunks, None)
        elif cfg.schedule == "1f1b":
            chunks = (stages[info.rank],)
            pipe = OneF1B(chunks[0], None)
        else:
            raise ValueError(f"--schedule must be 'dualpipe' or '1f1b', got {cfg.schedule!r}")
        params = list({id(p): p for c in chunks for p in c.parameters()}.values())
        opt = torch.optim.AdamW(params, lr=cfg.lr)
        g = torch.Generator().manual_seed(cfg.seed)
        tokens = torch.randint(0, model.config.vocab_size, (cfg.batch_size, cfg.seq_len), generator=g)
        tokens = tokens.to(info.device)
        num_mb = cfg.microbatches or 2 * world
        losses = []
        for step in range(cfg.steps):
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = pipe.step(tokens, None, num_mb, stage_kwargs(tokens, tokens, None, num_mb))
            opt.step()
            # DualPipe has the loss on ranks 0 and P-1, 1F1B on the last rank: print it once.
            if loss is not None and (info.is_rank0 or cfg.schedule == "1f1b"):
                losses.append(float(loss))
                print(json.dumps({"step": step, "loss": round(losses[-1], 5), "schedule": cfg.schedule,
                                  "world": world, "sec": round(time.perf_counter() - start, 4)}), flush=True)
        return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in vars(DemoConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    run(DemoConfig(**vars(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
