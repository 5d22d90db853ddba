"""The pipeline framework: recipes (`recipe.py`), plans and their execution with cache,
resume and failure records (`runner.py`), the stage API and registry (`stage.py`), the
content-addressed store (`store.py`), `--smoke` shrinking (`smoke.py`) and the one-stage
runner tests and libraries use (`testing.py`). It imports no stage and no training code.
Imports nothing, so a stage's config module loads without torch."""
