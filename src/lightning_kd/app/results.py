"""Where a kd-train run leaves its results for kd-report."""

METRICS_FILE = "metrics.json"  # settings and final metrics of one run, machine-readable
