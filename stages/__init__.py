"""Stage modules: one per pipeline stage, discovered by dsctl.stage.StageRegistry."""
