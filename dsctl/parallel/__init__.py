"""Parallelism applied to single-device modules: torch.distributed setup, pipeline
schedules (DualPipe, 1F1B) with a cost simulator, data and expert parallel helpers.

    dist.py             process groups and their setup/teardown
    launch.py           start a small local gloo job from Python (tests, benchmarks)
    schedule.py         pipeline ops; dualpipe.py, onef1b.py: the two schedules
    schedule_sim.py     the schedules' cost simulator (python -m dsctl.parallel.schedule_sim)
    pipeline.py         the executor that runs a schedule over real processes
    pipeline_stages.py     the DeepSeekV3 stage adapter (builds, cuts and runs the model's parts)
    data_parallel.py    gradient averaging; expert_parallel.py: all-to-all expert dispatch

Model code never imports this package; these modules wrap modules built for one device
(a split backward's deferred weight GEMMs live in dsctl/parallel/weight_grad.py).
Import from the module that defines a name; this package imports nothing.
"""
