"""Measure a system against its parts: evaluation items x arms -> metrics with intervals, gates, abstention, and
forgetting (our perplexity and lm-evaluation-harness tasks)."""
