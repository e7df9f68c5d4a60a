"""Data: robust image decoding, transforms, and datasets."""
