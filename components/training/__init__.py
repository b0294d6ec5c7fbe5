"""The recipe: behavior data in, an adapter folder out. The training loop, its batches, checkpoints, memory
estimate, distributed and sharded runs, and the reading adapter of a knowledge system."""
