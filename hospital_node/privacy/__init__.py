"""Record-level differential privacy (DP-SGD) and its accounting, shared by nodes and simulation."""
