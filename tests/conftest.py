"""Shared test settings: W&B never goes online from the test suite."""

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_CONSOLE", "off")
# Inductor compilation takes seconds per shape; unit tests check the math on the eager path and
# test the compiled path explicitly where it matters.
os.environ.setdefault("GAAF_COMPILE", "0")
