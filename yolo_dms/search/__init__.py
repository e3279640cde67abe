"""The search: Ultralytics trainer, structure step, schedule, search log and settings."""
