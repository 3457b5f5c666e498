"""Offline evaluation: ranking metrics, baselines, segments, champion/challenger
comparison and A/B testing. Modules are imported on demand (no work at import)."""
