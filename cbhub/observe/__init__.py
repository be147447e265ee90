"""What an operator sees: logs and Prometheus metrics."""
