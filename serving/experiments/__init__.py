"""Online A/B experiments: layered bucketing (config) and the per-arm report."""
