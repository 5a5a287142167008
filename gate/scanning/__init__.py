"""The scan pipeline: one pass over a source's tensors to a layer table, a summary and a fingerprint."""
