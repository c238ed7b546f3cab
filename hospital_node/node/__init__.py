"""One hospital's node: lifecycle, configuration, swaps, privacy ledger, status and reports."""
