"""optdsl benchmarks: ``python -m benchmarks`` runs the suite (docs/benchmarks.md)."""
