"""Bytes, one way: hashing, durable and atomic writes, verified folders, object stores and the content-keyed stage
store. The floor beside spec/: it imports nothing else of ours."""
