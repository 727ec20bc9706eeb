"""Tools around the product, not the product: the demo, benchmarks, the fleet runner (may import every layer)."""
