"""Teacher generation: prompts and parsers (prompts.py), the phased plan and its runner (plan.py)."""
