"""Consent Ledger: per-user consents and permissions, and the check before anything is collected."""

__version__ = "0.1.0"
