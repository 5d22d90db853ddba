"""Training: the core every training stage runs on, its configs, batches and checkpoints.

    config.py       the config pieces (optimizer, loop, language-model batches)
    loop.py         the core `Trainer`, `LMTrainer`, `StepStrategy`
    batches.py      packed token windows and chat examples, pure functions of the step
    optim.py        AdamW parameter groups and the learning-rate schedules
    checkpoint.py   resumable checkpoints; artifacts.py: exported checkpoint artifacts
    examples.py     chat examples for sft and distill; distill.py: students and their loss
    strategies.py   data parallel and pipeline steps; parallel_config.py: what can run
    launch.py       start a stage under torchrun; worker.py: the torchrun entry point

Import from the module that defines a name (`from dsctl.train.loop import LMTrainer`):
this package imports nothing, so a stage can import `dsctl.train.config` for its config
dataclass without paying for torch when the CLI starts.
"""
