"""Serving many requests at once on one base model.

- `engine`: continuous batching: one scheduler thread per base copy; requests join between decoding
  steps; LoRA rows of different systems share a forward pass through peft's `adapter_names=`.
- `kvcache`: merging, selecting and trimming left-padded per-row KV caches.
- `sampling`: per-request token choice (seeded generator, temperature, top_p), logprobs, `stop` strings.
- `grammar`: `response_format` as constrained decoding through llguidance.
"""
