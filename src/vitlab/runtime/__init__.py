"""How a model runs on this machine, one job a module; import the one you need.

- `vitlab.runtime.kernels`: the kernels the paper's blocks call: oneDNN's fused `linear`, the
  weight packing of `PackedWeights`, and the rule that picks the attention path. The only part
  `vitlab.models` imports.
- `vitlab.runtime.device`: placement (`pick_device`, `model_device`, `synchronize`, the CPU's
  name and features), `unwrap_model`, the allocator (`keep_freed_memory`) and `can_compile`.
- `vitlab.runtime.precision`: the matmul probes behind the benchmarks' peak and `auto`
  precision, `resolve_precision` and `autocast`.

Nothing here changes what a model computes, only where and how fast. This file re-exports
nothing, so importing the kernels does not load the probes.
"""
