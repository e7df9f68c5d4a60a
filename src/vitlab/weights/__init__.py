"""Weights: vitlab's own checkpoints and one adapter per ecosystem's layout.

`vitlab.weights.checkpoint` holds `load_checkpoint` / `save_checkpoint` and the source
registry; `adapter` the declarative key maps every adapter is written with; `timm`, `google`,
`hf`, `torchvision` one adapter each; `io` the reading and writing of files; `hub` the Hugging
Face Hub; `posemb` position-embedding resampling as each ecosystem does it.
"""
