"""The adapter methods (the analogue of peft's tuners/): a spec becomes a peft config, an attached model and a
standard peft folder; hybrids, merging and inspection of what an adapter changed."""
