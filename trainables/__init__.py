"""Data plane of the platform: everything a Ray worker runs.

Data loading, synthesis, models, losses, training loops, metrics and the Ray Train adapters
live here. Nothing in this package imports `platform` (Ray workers import the standard
library's `platform` before the repo is on their path), MLflow, or downloads anything at
import time.
"""
