"""Apple GPUs: Metal kernels with an arm64 host, exported as objects for the link on a Mac.

No Apple linker exists off macOS, so the artifact is a `.tar` of Mach-O objects: the host code
(Relax VM functions and kernel launchers) and `devc.o`, which carries the Metal source of every
kernel (the Metal driver compiles it when the library is loaded). The link, on a Mac:

- `metal` (macOS 11+): `mkdir obj && tar xf LIB.tar -C obj && clang -dynamiclib -arch arm64
  -undefined dynamic_lookup -o LIB.dylib obj/*.o`; the TVM runtime already loaded in the
  process provides the `TVMFFI*` symbols, as in TVM's own macOS `create_shared`.
- `iphone` (iOS 14+): `mkdir obj && tar xf LIB.tar -C obj && libtool -static -o libLIB.a
  obj/*.o`; the app links it with `-Wl,-force_load,libLIB.a` (its functions register themselves
  from static constructors that nothing else references) next to the TVM runtime, and opens it
  with `tvm.runtime.system_lib(PREFIX)` (C++: `ffi.SystemLib`), PREFIX being the library's
  stem with non-alphanumerics as `_` plus a trailing `_` (`tiny_q4f16_1_iphone_`).
"""

from __future__ import annotations

import dataclasses

from tvm.s_tir import dlight as dl

from .gpu import DeviceLimits, GPUTarget

# Metal guarantees 256 threads per threadgroup and 32 KB threadgroup memory; every Apple
# Silicon GPU runs 32-wide SIMD groups, so cross-thread sums may use SIMD shuffles.
APPLE_GPU_LIMITS = DeviceLimits(256, 32 * 1024, 32)


@dataclasses.dataclass
class MetalTarget(GPUTarget):
    name: str = "metal"
    description: str = "Apple Silicon Macs (Metal; .tar of objects linked on the Mac)"
    kind: str = "metal"
    device: str = "metal"
    # The OS version puts an LC_BUILD_VERSION (platform, minimum OS) into every object, so the
    # Apple linker knows what it links; macOS 11 is the first with Apple Silicon.
    host_triple: str | None = "arm64-apple-macos11.0"
    limits: DeviceLimits = APPLE_GPU_LIMITS

    def schedule_rules(self) -> list[dl.ScheduleRule]:
        # DLight's Matmul tries its simdgroup (tensor) path for Metal, which segfaults on
        # dynamic-shape matmuls in this TVM.
        return [
            r
            for r in super().schedule_rules()
            if not isinstance(getattr(r, "rule", r), dl.gpu.Matmul)  # wrapped in `Declining`
        ]


@dataclasses.dataclass
class IPhoneTarget(MetalTarget):
    name: str = "iphone"
    description: str = "iOS devices (Metal; static-library .tar with a system-lib prefix)"
    host_triple: str | None = "arm64-apple-ios14.0"
    system_lib: bool = True
