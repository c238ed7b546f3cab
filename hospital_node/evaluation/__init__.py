"""Per-finding evaluation: AUC with confidence intervals, ROC curves, consensus residual."""
