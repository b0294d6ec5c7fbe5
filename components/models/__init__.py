"""Base models: resolve a spec's id to a local folder, load it (4-bit included), choose its precision, render its
prompts and find the layers an adapter wraps."""
