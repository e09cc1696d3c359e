"""The two ways a CLI command fails on purpose; `main` turns each into one line and an exit status."""


class UsageError(Exception):
    """Bad input from the user: exit 2 with one line."""


class RunError(Exception):
    """Something ran and failed: exit 1 with one line."""
