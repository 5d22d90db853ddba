"""Stage modules: one per pipeline stage, discovered by dsctl.pipeline.stage.StageRegistry."""
