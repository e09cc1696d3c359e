"""distill: a Dagster asset graph from seed prompts to a deployable small model."""
