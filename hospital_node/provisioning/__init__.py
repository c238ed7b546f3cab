"""Provisioning a network: its description, the certificate authority, per-hospital bundles."""
