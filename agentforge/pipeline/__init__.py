"""The pipeline's plan, its state file and its cross-phase report (wired by ``phases/pipeline.py``)."""
