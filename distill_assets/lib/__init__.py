"""The pure library: plain functions over DataFrames and paths. Never imports dagster."""
