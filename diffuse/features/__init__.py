"""Feature extractors for the quality metrics: a domain classifier and the FID Inception-v3."""
