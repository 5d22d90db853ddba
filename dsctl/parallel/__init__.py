"""Parallelism applied to single-device modules: torch.distributed setup, pipeline
schedules (DualPipe, 1F1B) with a cost simulator, data and expert parallel helpers.

Model code never imports this package; these functions wrap modules built for one device.
"""
