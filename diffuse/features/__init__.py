"""Feature extractors for the quality metrics (a domain classifier, the FID Inception-v3), their weights and
the cached features of the real data."""
