"""Dagster wiring only: assets, asset checks, resources, jobs and sensors, one file per stage."""
