"""Parallelism applied to single-device modules: torch.distributed setup, pipeline
schedules (DualPipe, 1F1B) with a cost simulator, data and expert parallel helpers.

    dist.py             process groups and their setup/teardown
    launch.py           start a small local gloo job from Python (tests, benchmarks)
    schedule.py         pipeline ops; dualpipe.py, onef1b.py: the two schedules
    schedule_sim.py     the schedules' cost simulator (python -m dsctl.parallel.schedule_sim)
    pipeline.py         the executor that runs a schedule over real processes
    weight_grad.py      Linear layers whose weight GEMMs wait for a split backward's W op
    model_stages.py     the DeepSeekV3 stage adapter (the one module that imports the model)
    data_parallel.py    gradient averaging; expert_parallel.py: all-to-all expert dispatch

Model code never imports this package; these modules wrap modules built for one device.
Import from the module that defines a name; this package imports nothing.
"""
