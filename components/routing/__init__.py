"""Decide what a spec needs (an adapter, an index or both), by reading the spec or by measuring the base model, and
say why; `adaptflow plan` computes it all without training."""
