"""Verifiers for the `verified` stage: math answers, classification labels and code run in a sandbox."""
