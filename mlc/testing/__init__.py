"""The test harness, kept out of the product: random-weight Hugging Face models with a trained
tokenizer (`random_model`) and the real-shape cases of the GPU checks (`real_shapes`), the
kernel-by-kernel checker of GPU builds against the CPU (`kernel_check`, its inputs in
`kernel_case`, the paged-KV-cache states in `kv_cache_cases`, numpy references in
`numpy_kernels`), the devices it runs kernels on without a GPU (`opencl_check` on pocl,
`vulkan_check` on llvmpipe, `wgsl_check` on wgpu) and the parse of Metal sources with clang
(`metal_check`). Tests and benchmarks import it; product code (`mlc`, `mlc.models`,
`mlc.targets`, `mlc.runtime`) never does, which `tests/test_layout.py` enforces. Most modules
need the `test` extra.
"""
