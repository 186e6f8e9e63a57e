"""`cuda`, `metal` and `iphone` builds of a tiny Llama, checked by reading the artifacts.

No GPU here: nothing runs. CUDA: the fatbin nvcc embedded is found in the `.so` by its magic
and listed by NVIDIA's `cuobjdump` (cubins for the requested arches, PTX for the oldest, every
kernel the host code launches defined). Metal/iPhone: the `.tar` objects are read as Mach-O
(arm64, platform macOS or iOS), the Metal source must define every kernel the host code
names, and each kernel's source must parse and type-check with clang against our declarations
of Metal's standard library (`mlc.testing.metal_check`; no Metal compiler here). Bad input
(unknown target or arch, no nvcc, nvcc failing) must fail clearly and leave nothing behind.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from tvm.s_tir import dlight as dl

from mlc.build import BuildOptions, build
from mlc.cli import main
from mlc.targets import describe_targets, get_target, local_target
from mlc.testing.metal_check import check_metal_source, metal_sources_of_tar
from mlc.testing.random_model import save_model

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
# A global function in `cuobjdump --dump-elf-symbols`: "STT_FUNC STB_GLOBAL STO_ENTRY name"
# (CUDA 12 and older) or "FUNC GLOBAL DEFAULT ENTRY name" (13.5).
GLOBAL_FUNCTION = re.compile(r"\s*(?:STT_)?FUNC\s+(?:STB_)?GLOBAL\s")
# Kernel launches name their device function `<PrimFunc>_kernel` (a C string in host code).
HOST_KERNEL_NAME = re.compile(rb"([A-Za-z_][A-Za-z0-9_]*_kernel)\x00")
METAL_KERNEL_DEF = re.compile(r"kernel void ([A-Za-z_][A-Za-z0-9_]*)\(")
# Attention kernels of the paged KV cache's GPU variant: the CPU variant has none of them.
PAGED_KV_KERNELS = {"batch_prefill_paged_kv_kernel", "batch_decode_paged_kv_kernel"}

MH_MAGIC_64, CPU_TYPE_ARM64, MH_OBJECT = 0xFEEDFACF, 0x0100000C, 1
LC_SYMTAB, LC_BUILD_VERSION = 0x2, 0x32
PLATFORM_MACOS, PLATFORM_IOS = 1, 2


@pytest.fixture(scope="session")
def hf_dir(tiny_builds) -> Path:
    """The tiny Llama `tiny_builds` builds (same place, same settings), without a build."""
    path = tiny_builds.root / "hf" / "llama"
    if not path.exists():
        save_model(path)
    return path


def _build(tiny_builds, target: str, quantization: str, arch: str | None = None) -> Path:
    options = {"target": target, **({"arch": arch} if arch else {})}
    _, out = tiny_builds.get("llama", quantization, build_options=options)
    (lib,) = out.glob(f"*-{target}.*")
    return lib


# --- CUDA -------------------------------------------------------------------------------


def _cuobjdump() -> str:
    found = shutil.which("cuobjdump")
    spec = importlib.util.find_spec("nvidia")  # PyPI's nvidia-cuda-cuobjdump
    for root in spec.submodule_search_locations if spec else []:
        found = found or next((str(p) for p in Path(root).glob("*/bin/cuobjdump")), None)
    assert found, "cuobjdump not found: `pip install nvidia-cuda-cuobjdump`"
    return found


def _fatbin(library: bytes) -> tuple[bytes, int, int]:
    """The one fatbin in `library` (header: magic, version u16, header size u16, size u64)."""
    start = library.find(FATBIN_MAGIC)
    assert start >= 0, "no fatbin in the library: device code would be compiled at load"
    _, _, header, size = struct.unpack_from("<IHHQ", library, start)
    end = start + header + size
    assert library.find(FATBIN_MAGIC, end) < 0, "more than one fatbin"
    return library[start:end], start, end


def _cubin_kernels(cuobjdump: str, fatbin: Path) -> dict[str, set[str]]:
    """Global functions defined in each cubin, by arch."""
    out = subprocess.run(
        [cuobjdump, "--dump-elf-symbols", str(fatbin)], capture_output=True, text=True, check=True
    ).stdout
    kernels: dict[str, set[str]] = {}
    for section in out.split("Fatbin ")[1:]:
        if section.startswith("elf code:"):
            arch = re.search(r"arch = (\S+)", section).group(1)
            kernels[arch] = {
                row.split()[-1] for row in section.splitlines() if GLOBAL_FUNCTION.match(row)
            }
    return kernels


@pytest.mark.parametrize(
    ("quantization", "arch", "cubins", "ptx"),
    [
        ("q4f16_1", "sm_90,sm_80", ["sm_80", "sm_90"], ["sm_80"]),
        ("q4f32_1", None, ["sm_80"], ["sm_80"]),
    ],
)
def test_cuda_embeds_fatbin_for_requested_arches(
    tiny_builds, tmp_path, quantization, arch, cubins, ptx
):
    lib = _build(tiny_builds, "cuda", quantization, arch)
    data = lib.read_bytes()
    fatbin, start, end = _fatbin(data)
    assert b"__global__" not in data, "CUDA source left in the library"
    path = tmp_path / "kernels.fatbin"
    path.write_bytes(fatbin)
    cuobjdump = _cuobjdump()

    def listing(flag: str) -> list[str]:
        out = subprocess.run([cuobjdump, flag, str(path)], capture_output=True, text=True)
        return sorted(re.findall(r"\.(sm_\d+)\.(?:cubin|ptx)", out.stdout))

    assert listing("--list-elf") == cubins
    assert listing("--list-ptx") == ptx

    host = set(HOST_KERNEL_NAME.findall(data[:start] + b"\x00" + data[end:]))
    launched = {name.decode() for name in host}
    assert PAGED_KV_KERNELS <= launched
    defined_by_arch = _cubin_kernels(cuobjdump, path)
    assert sorted(defined_by_arch) == cubins
    for cubin_arch, defined in defined_by_arch.items():
        assert launched <= defined, f"{cubin_arch} lacks {sorted(launched - defined)}"


def test_cuda_fp16_build_of_a_wider_model_compiles(tiny_builds, monkeypatch):
    """fp16 matmuls of 256 x 512 on sm_90: DLight's tensor-core schedule crashed TVM 0.27's
    compiler here (a segfault, which would end the whole test run). The cuda preset shows
    DLight's matmul rule a GPU without tensor cores (`targets/cuda.py: WithoutTensorCores`), so
    the rule never enters that path (nor imports TVM's tensor intrinsics, half a minute)."""
    tensorized = []
    monkeypatch.setattr(
        dl.gpu.matmul.MatmulTensorization, "apply", lambda *args: tensorized.append(args)
    )
    wide = {"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}
    options = {"target": "cuda", "arch": "sm_90"}
    _, out = tiny_builds.get("llama-wide", "q0f16", build_options=options, **wide)
    (lib,) = out.glob("*-cuda.so")
    assert FATBIN_MAGIC in lib.read_bytes()
    assert not tensorized


def test_unknown_arch_names_what_nvcc_knows(hf_dir, tmp_path):
    result = CliRunner().invoke(
        main, ["build", str(hf_dir), "--target", "cuda", "--arch", "sm_12", "-o", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "nvcc cannot compile for sm_12" in result.output
    assert "sm_80" in result.output and "sm_90" in result.output


def test_arch_on_a_non_cuda_target_is_an_error(hf_dir, tmp_path):
    result = CliRunner().invoke(
        main, ["build", str(hf_dir), "--target", "metal", "--arch", "sm_80", "-o", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "--arch does not apply to the metal target" in result.output


def test_missing_nvcc_says_install_the_cuda_toolkit(hf_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("nvcc") is None
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(hf_dir), "--target", "cuda", "-o", str(out)])
    assert result.exit_code == 1
    assert "error: the cuda target needs NVIDIA's nvcc" in result.output
    assert "install the CUDA toolkit" in result.output
    assert not out.exists() or not any(out.iterdir())


def test_failed_nvcc_leaves_no_artifact(hf_dir, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvcc"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--list-gpu-code" ]; then echo sm_80; exit 0; fi\n'
        "echo 'fake nvcc: out of registers' >&2; exit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    out = tmp_path / "out"
    opts = BuildOptions(hf_dir, "q4f32_1", target="cuda", output=out, quiet=True)
    with pytest.raises(RuntimeError, match="fake nvcc: out of registers"):
        build(opts)
    assert list(out.iterdir()) == []


# --- Metal / iPhone ---------------------------------------------------------------------


def _macho(data: bytes) -> tuple[int, int, tuple[int, int] | None, dict[str, bool]]:
    """(cpu type, file type, (platform, minimum OS) or None, external symbols -> defined)."""
    magic, cputype, _, filetype, ncmds = struct.unpack_from("<IiiII", data)
    assert magic == MH_MAGIC_64, "not a 64-bit Mach-O object"
    build_version, symbols, offset = None, {}, 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, offset)
        if cmd == LC_BUILD_VERSION:
            build_version = struct.unpack_from("<II", data, offset + 8)
        elif cmd == LC_SYMTAB:
            symoff, nsyms, stroff, _ = struct.unpack_from("<IIII", data, offset + 8)
            for i in range(nsyms):
                strx, ntype = struct.unpack_from("<IB", data, symoff + 16 * i)
                if ntype & 0x01:  # N_EXT
                    name = data[stroff + strx : data.index(b"\0", stroff + strx)].decode()
                    symbols[name] = ntype & 0x0E != 0  # N_UNDF is 0
        offset += size
    return cputype, filetype, build_version, symbols


@pytest.mark.parametrize("quantization", ["q4f16_1", "q4f32_1"])
@pytest.mark.parametrize(
    ("target", "platform", "min_os"),
    [("metal", PLATFORM_MACOS, 11), ("iphone", PLATFORM_IOS, 14)],
)
def test_metal_tar_holds_arm64_objects_and_every_kernel(
    tiny_builds, target, platform, min_os, quantization
):
    lib = _build(tiny_builds, target, quantization)
    assert lib.suffix == ".tar"
    with tarfile.open(lib) as tar:
        objects = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert objects and all(name.endswith(".o") for name in objects)
    symbols: dict[str, bool] = {}
    for name, data in objects.items():
        cputype, filetype, build_version, object_symbols = _macho(data)
        assert (cputype, filetype) == (CPU_TYPE_ARM64, MH_OBJECT), name
        assert build_version is not None, f"{name} has no LC_BUILD_VERSION"
        assert build_version == (platform, min_os << 16), name  # minos is X.Y.Z as 16.8.8 bits
        symbols.update({s: d or symbols.get(s, False) for s, d in object_symbols.items()})

    launched = {n.decode() for data in objects.values() for n in HOST_KERNEL_NAME.findall(data)}
    sources = metal_sources_of_tar(lib)  # one source per kernel, by name
    metal = "\n".join(sources.values())
    assert all(s.startswith("#include <metal_stdlib>") for s in sources.values())
    defined = set(METAL_KERNEL_DEF.findall(metal))
    assert defined == set(sources)
    assert launched, "no kernel launches found in the host code"
    assert launched <= defined, f"kernels missing from the Metal source: {launched - defined}"
    # Each kernel parses and type-checks (clang against our declarations of metal_stdlib).
    assert [e for s in sources.values() for e in check_metal_source(s)] == []

    prefix = f"{lib.stem.replace('-', '_')}_" if target == "iphone" else ""
    assert {prefix + k for k in PAGED_KV_KERNELS} <= launched
    # The quantized linears are GEMVs reducing K across a SIMD group, not one thread per
    # output looping over K (DLight's Fallback, which they fell to without our rule).
    starts = [(m.start(), m.group(1)) for m in METAL_KERNEL_DEF.finditer(metal)]
    bodies = {
        name: metal[start : next((s for s, _ in starts if s > start), len(metal))]
        for start, name in starts
    }
    linears = [name for name in bodies if "dequantize_matmul" in name]
    assert len(linears) >= 8, linears  # q/k/v, o, gate/up, down, LM head; prefill and decode
    assert all("simd_shuffle_down" in bodies[name] for name in linears)
    ours = {s for s, d in symbols.items() if d and "tvm_ffi" in s}
    assert ours, "no TVM symbols defined"
    if target == "iphone":
        # A static library: every symbol carries the prefix, and registers itself by name.
        assert all(prefix in s for s in ours), sorted(s for s in ours if prefix not in s)
        assert f"_{prefix}__tvm_ffi__library_bin" in ours
        assert "_TVMFFIEnvModRegisterSystemLibSymbol" in symbols
    else:
        assert "___tvm_ffi__library_bin" in ours
        assert "_TVMFFIEnvModRegisterSystemLibSymbol" not in symbols


def _corrupt_shuffle(source: str) -> str:
    """A `simd_shuffle_down` given no delta."""
    return re.sub(
        r"simd_shuffle_down\((\w+\[0\]), \d+\)", r"simd_shuffle_down(\1)", source, count=1
    )


def _corrupt_address_space(source: str) -> str:
    """A `device half*` parameter assigned to a `threadgroup half*` local."""
    param = re.search(r"device half\* (\w+) \[\[", source).group(1)
    return source.replace(") {\n", f") {{\n  threadgroup half* staged = {param};\n", 1)


def _corrupt_components(source: str) -> str:
    """A `float4` built from three floats."""
    return re.sub(r"float4\(([^,()]+), [^,()]+,", r"float4(\1,", source, count=1)


@pytest.mark.parametrize(
    ("kernel", "corrupt", "expected"),
    [
        (
            "dequantize_matmul_kernel",
            _corrupt_shuffle,
            "no matching function for call to 'simd_shuffle_down'; candidate function template "
            "not viable: requires 2 arguments, but 1 was provided",
        ),
        (
            "dequantize_matmul_kernel",
            _corrupt_address_space,
            "cannot initialize a variable of type 'threadgroup half *'",
        ),
        (
            "batch_decode_paged_kv_kernel",
            _corrupt_components,
            "wrong number of components for this vector type",
        ),
        (
            "dequantize_matmul_kernel",
            lambda s: s.replace("threadIdx.x)", "threadIdx.z)", 1),
            "vector component access exceeds type 'uint2'",
        ),
        (
            "dequantize_matmul_kernel",
            lambda s: s.replace("red_buf0[0] = ", "red_buf1[0] = ", 1),
            "use of undeclared identifier 'red_buf1'",
        ),
        (
            "dequantize_matmul_kernel",
            lambda s: s.replace("[[ buffer(1) ]]", "[[ bufer(1) ]]"),
            "unknown Metal attribute [[bufer(1)]]",
        ),
    ],
    ids=["shuffle-arity", "address-space", "vector-size", "swizzle", "undeclared", "attribute"],
)
def test_metal_check_reports_errors(tiny_builds, kernel, corrupt, expected):
    """The check fails on plausible mistakes, naming the problem, the kernel and the line."""
    source = metal_sources_of_tar(_build(tiny_builds, "metal", "q4f16_1"))[kernel]
    assert check_metal_source(source) == []
    bad = corrupt(source)
    pairs = zip(source.split("\n"), bad.split("\n"), strict=False)
    line = next(i for i, (a, b) in enumerate(pairs, 1) if a != b)
    errors = check_metal_source(bad)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{kernel}:{line}: {expected}"), errors


# --- choosing a target ------------------------------------------------------------------


def test_unknown_target_lists_the_presets(hf_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", str(hf_dir), "--target", "tpu", "-o", str(out)])
    assert result.exit_code == 1
    assert (
        "unknown target 'tpu'; choose one of: auto, llvm, arm64, cuda, metal, iphone"
        in result.output
    )
    assert not out.exists()


def test_auto_picks_the_local_device(monkeypatch):
    gpu = Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia/gpus").is_dir()
    expected = "cuda" if gpu else "llvm"
    assert local_target() == expected
    assert get_target("auto").name == expected
    assert f"(now: {expected})" in describe_targets()
    monkeypatch.setattr("sys.platform", "darwin")
    monkeypatch.setattr("platform.machine", lambda: "arm64")
    assert get_target("auto").name == "metal"


@pytest.mark.parametrize("target", ["metal", "iphone"])
def test_metal_schedules_without_dlights_matmul(target):
    """DLight's Matmul tries Metal's simdgroup path, which crashes TVM's compiler on our
    dynamic-shape float matmuls (q0f32/q0f16 builds, float weights of GGUF files)."""

    def innermost(rule):
        while hasattr(rule, "rule"):  # `Declining`, `WithoutTensorCores`
            rule = rule.rule
        return rule

    def rule_names(preset: str) -> set[str]:
        return {type(innermost(r)).__name__ for r in get_target(preset).schedule_rules()}

    assert "Matmul" in rule_names("cuda") and "Matmul" not in rule_names(target)
