"""Check a GPU build kernel by kernel against the CPU, on devices TVM's runtime cannot drive.

For each fused PrimFunc of a model the checker (1) lowers its GPU-scheduled form to a host
function plus device kernels (TVM's own `SplitHostDevice`), (2) picks small values for the
symbolic shapes and makes inputs, (3) runs the host function here — binding its lets,
allocating its intermediate buffers and launching each device kernel through a `Device`
(pyopencl on pocl, Vulkan on llvmpipe) — and (4) compares every buffer with the same PrimFunc
compiled unscheduled for llvm (the paged-KV-cache kernels: with the CPU build's own kernel),
each buffer with its own tolerance, element by element. Given the model's facts, (5) the
quantized Linears, RMSNorms and decode attention are also compared, device and TIR reference
both, with numpy computing in float64 (`numpy_kernels`).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx
from tvm.target import Target
from tvm.tirx import expr as tx

from mlc.targets.base import TargetPreset

from .kernel_case import KernelCase, free_vars, is_buffer, random_array, scalar_dtype
from .kv_cache_cases import kv_cache_case
from .numpy_kernels import ModelFacts, kind, numpy_reference

# Symbolic dims of the model's functions, small and distinct so index mix-ups show.
SHAPE_VALUES = {"seq_len": 5, "batch_size": 3, "num_seqs": 2, "total_seq_len": 5}
DEFAULT_SHAPE_VALUE = 4
LAUNCH_DIMS = {"x": 0, "y": 1, "z": 2}


class Device(Protocol):
    """Where device kernels run: buffers in, kernels launched by name."""

    def upload(self, array: np.ndarray) -> Any: ...

    def alloc(self, nbytes: int) -> Any: ...

    def download(self, buffer: Any, shape: tuple[int, ...], dtype: str) -> np.ndarray: ...

    def launch(
        self, kernel: str, args: list[Any], grid: tuple[int, ...], block: tuple[int, ...]
    ) -> None: ...


@dataclasses.dataclass
class KernelResult:
    name: str
    kernels: list[str]
    max_error: float
    ok: bool
    message: str = ""
    numpy_checked: bool = False  # also compared with an independent numpy reference


@dataclasses.dataclass
class LoweredModule:
    """The model's GPU kernels after host/device split, with what checks them."""

    split: tvm.IRModule  # host PrimFuncs calling device kernels
    source: str  # device source of every kernel (OpenCL C)
    reference: dict[str, tirx.PrimFunc]  # the same PrimFuncs, unscheduled or CPU-built

    def functions(self) -> list[str]:
        """Host functions that launch at least one device kernel."""
        return sorted(
            g.name_hint
            for g, f in self.split.functions.items()
            if isinstance(f, tirx.PrimFunc) and launches(f)
        )

    def host(self, name: str) -> tirx.PrimFunc:
        return self.split[name]

    def kernel(self, name: str) -> tirx.PrimFunc:
        return self.split[name]


# -- lowering -------------------------------------------------------------------------------


def model_kernels(
    model_dir: Path, quantization: str, preset: TargetPreset
) -> tuple[dict[str, tirx.PrimFunc], dict[str, tirx.PrimFunc]]:
    """(GPU-scheduled PrimFuncs, unscheduled twins) of a model as `mlc build` compiles it."""
    from mlc.build import open_checkpoint
    from mlc.compiler import compile_module, export_model
    from mlc.models import get_architecture
    from mlc.quantization import get_quantization

    checkpoint = open_checkpoint(Path(model_dir))
    arch = get_architecture(checkpoint.config)
    quant = get_quantization(quantization).for_target(preset.name)
    config = arch.CONFIG.from_hf(checkpoint.config)
    target = preset.tvm_target()
    names = [name for name, _ in arch.MODEL(config, dtype=quant.model_dtype).named_parameters()]
    weight_map = arch.hf_weight_map(config)
    quant = quant.for_checkpoint(checkpoint, {n: weight_map[n] for n in names})  # GGUF formats
    model = quant.quantize_model(arch.MODEL(config, dtype=quant.model_dtype))
    mod, _ = export_model(model, target)
    captured: dict[str, tvm.IRModule] = {}

    @tvm.instrument.pass_instrument
    class Capture:
        def run_after_pass(self, m: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
            if info.name == "FuseTIR":
                captured.setdefault("fused", m)

        def run_before_pass(self, m: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
            if info.name == "RewriteDataflowReshape":
                captured.setdefault("scheduled", m)
                raise _StopPipeline

    with tvm.transform.PassContext(instruments=[Capture()]):
        try:
            compile_module(mod, preset, target)
        except Exception:
            if "scheduled" not in captured:
                raise
    fused, scheduled = (_prim_funcs(captured[k]) for k in ("fused", "scheduled"))
    reference = {n: f for n, f in fused.items() if n in scheduled and not _is_scheduled(f)}
    # The paged-KV-cache kernels are written per target: the CPU build's are the reference.
    cpu_mod, _ = export_model(arch.MODEL(config, dtype=quant.model_dtype), Target("llvm"))
    cpu_funcs = _prim_funcs(cpu_mod)
    for name in scheduled:
        twin = next((t for t in cpu_twin_names(name) if t in cpu_funcs), None)
        if name not in reference and twin and same_signature(scheduled[name], cpu_funcs[twin]):
            reference[name] = cpu_funcs[twin]
    return scheduled, reference


def cpu_twin_names(name: str) -> list[str]:
    """Names the CPU build gives the KV-cache kernel `name` (`..._cpu[_sliding_window]`)."""
    base, window = name.removesuffix("_sliding_window"), name.endswith("_sliding_window")
    suffix = "_sliding_window" if window else ""
    twins = [name, f"{base}_cpu{suffix}"]
    if name == "tir_attention_merge_state":
        twins.append("merge_state_inplace_cpu")
    return twins


def same_signature(a: tirx.PrimFunc, b: tirx.PrimFunc) -> bool:
    """Same parameters: buffers of the same dtype and rank, scalars of the same dtype."""

    def sig(f: tirx.PrimFunc) -> list[tuple[str, int]]:
        return [
            (str(p.dtype), len(p.shape)) if is_buffer(p) else (scalar_dtype(p), -1)
            for p in f.params
        ]

    return sig(a) == sig(b)


class _StopPipeline(Exception):
    """Raised inside the Relax pipeline once the scheduled kernels are captured."""


def _prim_funcs(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {g.name_hint: f for g, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}


def _is_scheduled(func: tirx.PrimFunc) -> bool:
    return bool(func.attrs and func.attrs.get("tirx.is_scheduled", False))


def lower(
    scheduled: dict[str, tirx.PrimFunc], reference: dict[str, tirx.PrimFunc], target: Target
) -> LoweredModule:
    """Split host from device code as `tvm.compile` does; keep the device source."""
    mod = tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in scheduled.items()})
    captured: dict[str, tvm.IRModule] = {}

    @tvm.instrument.pass_instrument
    class Capture:
        def run_after_pass(self, m: tvm.IRModule, info: tvm.transform.PassInfo) -> None:
            if info.name == "tirx.SplitHostDevice":
                captured["split"] = m

    with tvm.transform.PassContext(instruments=[Capture()]):
        lib = tvm.tirx.build(mod, target=target)
    source = "\n".join(m.inspect_source() for m in lib.imports)
    return LoweredModule(captured["split"], source, reference)


def launches(func: tirx.PrimFunc) -> list[tvm.ir.Call]:
    """The `call_ffi_kernel` launches in a host function, in program order."""
    found: list[tvm.ir.Call] = []

    def visit(node: object) -> None:
        if isinstance(node, tvm.ir.Call) and getattr(node.op, "name", "") == "tirx.call_ffi_kernel":
            found.append(node)

    _walk(func.body, visit)
    return found


def _walk(stmt: tirx.Stmt, visit: Callable[[object], None]) -> None:
    for s in _flatten(stmt):
        if isinstance(s, tirx.Evaluate):
            visit(s.value)


def _flatten(stmt: tirx.Stmt) -> list[tirx.Stmt]:
    if isinstance(stmt, tirx.SeqStmt):
        return [s for child in stmt.seq for s in _flatten(child)]
    if isinstance(stmt, tirx.AttrStmt):
        return _flatten(stmt.body)
    return [stmt]


# -- expressions ----------------------------------------------------------------------------

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    tx.Add: operator.add,
    tx.Sub: operator.sub,
    tx.Mul: operator.mul,
    tx.FloorDiv: operator.floordiv,
    tx.FloorMod: operator.mod,
    tx.Min: min,
    tx.Max: max,
    tx.EQ: operator.eq,
    tx.NE: operator.ne,
    tx.LT: operator.lt,
    tx.LE: operator.le,
    tx.GT: operator.gt,
    tx.GE: operator.ge,
    tx.And: lambda a, b: a and b,
    tx.Or: lambda a, b: a or b,
}


def evaluate(expr: tvm.ir.Expr, env: dict[tx.Var, Any]) -> Any:
    """The value of a host-side expression (shape arithmetic) given its variables."""
    if isinstance(expr, (tx.IntImm, tx.FloatImm)):
        return expr.value
    if isinstance(expr, tx.Var):
        if expr not in env:
            raise KeyError(f"no value for {expr.name} in a launch expression")
        return env[expr]
    if type(expr) in _BINARY:
        return _BINARY[type(expr)](evaluate(expr.a, env), evaluate(expr.b, env))
    if isinstance(expr, tx.Div):
        a, b = evaluate(expr.a, env), evaluate(expr.b, env)
        return a / b if "float" in expr.dtype else int(a / b)
    if isinstance(expr, tx.Mod):
        a, b = evaluate(expr.a, env), evaluate(expr.b, env)
        return math.fmod(a, b) if "float" in expr.dtype else a - b * int(a / b)
    if isinstance(expr, tx.Not):
        return not evaluate(expr.a, env)
    if isinstance(expr, tx.Cast):
        value = evaluate(expr.value, env)
        return float(value) if "float" in expr.dtype else int(value)
    if isinstance(expr, tx.Select):
        branch = expr.true_value if evaluate(expr.condition, env) else expr.false_value
        return evaluate(branch, env)
    if isinstance(expr, tvm.ir.Call) and getattr(expr.op, "name", "") == "tirx.if_then_else":
        cond, yes, no = expr.args
        return evaluate(yes if evaluate(cond, env) else no, env)
    raise NotImplementedError(f"cannot evaluate {type(expr).__name__} on the host: {expr}")


# -- inputs -----------------------------------------------------------------------------------


def random_case(func: tirx.PrimFunc, rng: np.random.Generator) -> KernelCase:
    """Small shapes, random floats in [-1, 1], small non-negative integers (valid indices)."""
    values: dict[str, int | float] = {}
    for var in free_vars(func):
        offset = any(p.elem_offset.same_as(var) for p in func.params if is_buffer(p))
        values[var.name] = 0 if offset else SHAPE_VALUES.get(var.name, DEFAULT_SHAPE_VALUE)
    arrays = {}
    for param in func.params:
        if is_buffer(param):
            buf = param
            shape = tuple(int(_shape_value(d, values)) for d in buf.shape)
            arrays[buf.name] = random_array(shape, buf.dtype, rng)
    scalars = {
        p.name: (0.5 if "float" in scalar_dtype(p) else 1) for p in func.params if not is_buffer(p)
    }
    return KernelCase(values, arrays, scalars)


def _shape_value(dim: tvm.ir.Expr, values: dict[str, int | float]) -> Any:
    env = {
        v: values[v.name] for v in tvm_ffi.get_global_func("tirx.analysis.UndefinedVars")(dim, [])
    }
    return evaluate(dim, env)


# -- running ----------------------------------------------------------------------------------


def run_reference(func: tirx.PrimFunc, case: KernelCase) -> dict[str, np.ndarray]:
    """Every buffer after running `func` compiled for llvm on this CPU."""
    lib = tvm.tirx.build(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=Target("llvm")
    )
    tensors, args = {}, []
    for param in func.params:
        if is_buffer(param):
            name = param.name
            tensors[name] = tvm.runtime.tensor(case.arrays[name].copy())
            args.append(tensors[name])
        else:
            args.append(_typed(scalar_dtype(param), case.scalars[param.name]).item())
    lib["main"](*args)
    return {name: t.numpy() for name, t in tensors.items()}


def run_on_device(
    lowered: LoweredModule, name: str, case: KernelCase, device: Device
) -> dict[str, np.ndarray]:
    """Every buffer after running the host function `name`, its kernels launched on `device`."""
    host = lowered.host(name)
    env: dict[tx.Var, Any] = {}  # buffer Var -> device buffer; scalar Var -> value
    buffers: dict[str, tuple[Any, tuple[int, ...], str]] = {}
    for param in host.params:
        if is_buffer(param):
            array = case.arrays[param.name]
            env[param] = device.upload(array)
            buffers[param.name] = (env[param], array.shape, str(array.dtype))
            for d in [*param.shape, param.elem_offset]:
                if isinstance(d, tx.Var):
                    env[d] = case.values[d.name]
        else:
            env[param] = case.scalars[param.name]
    for stmt in _flatten(host.body):
        _execute(stmt, env, lowered, device)
    return {n: device.download(b, shape, dtype) for n, (b, shape, dtype) in buffers.items()}


def _buffer_of(expr: tvm.ir.Expr) -> tx.Var | None:
    """`B` for `B.data` (a `tirx.buffer_data` call), else None."""
    if isinstance(expr, tvm.ir.Call) and getattr(expr.op, "name", "") == "tirx.buffer_data":
        return expr.args[0]
    return None


def _execute(stmt: tirx.Stmt, env: dict, lowered: LoweredModule, device: Device) -> None:
    if isinstance(stmt, tirx.Bind):
        env[stmt.var] = evaluate(stmt.value, env)
    elif isinstance(stmt, tirx.DeclBuffer):
        source = _buffer_of(stmt.data) if stmt.data is not None else None
        if source is not None:
            env[stmt.buffer] = env[source]
    elif isinstance(stmt, tirx.AllocBuffer):
        buf = stmt.buffer
        count = math.prod(int(evaluate(d, env)) for d in buf.shape)
        env[buf] = device.alloc(max(count, 1) * tvm.DataType(buf.dtype).bits // 8)
    elif isinstance(stmt, tirx.Evaluate) and isinstance(stmt.value, tvm.ir.Call):
        if getattr(stmt.value.op, "name", "") == "tirx.call_ffi_kernel":
            _launch(stmt.value, env, lowered, device)
    elif isinstance(stmt, tirx.AssertStmt):
        pass
    elif isinstance(stmt, tirx.IfThenElse):
        branch = stmt.then_case if evaluate(stmt.condition, env) else stmt.else_case
        for s in _flatten(branch) if branch is not None else []:
            _execute(s, env, lowered, device)
    else:
        raise NotImplementedError(f"host statement {type(stmt).__name__} is not supported")


def _launch(call: tvm.ir.Call, env: dict, lowered: LoweredModule, device: Device) -> None:
    kernel_name = call.args[0].value
    kernel = lowered.kernel(kernel_name)
    tags = list(call.attrs.launch_params)
    if any(not t.startswith(("blockIdx.", "threadIdx.")) for t in tags):
        raise NotImplementedError(f"{kernel_name}: launch parameters {tags} are not supported")
    n = len(kernel.params)
    operands, extents = call.args[1 : 1 + n], call.args[1 + n :]
    args = []
    for param, operand in zip(kernel.params, operands, strict=True):
        buffer = _buffer_of(operand)
        if buffer is not None:
            args.append(env[buffer])
        else:
            args.append(_typed(scalar_dtype(param), evaluate(operand, env)))
    grid, block = [1, 1, 1], [1, 1, 1]
    for tag, extent in zip(tags, extents, strict=True):
        scope, dim = tag.split(".")
        (grid if scope == "blockIdx" else block)[LAUNCH_DIMS[dim]] = int(evaluate(extent, env))
    device.launch(kernel_name, args, tuple(grid), tuple(block))


def _typed(dtype: str, value: int | float) -> np.generic:
    return np.dtype(dtype).type(value)


# -- comparing --------------------------------------------------------------------------------

# Relative to each element's magnitude (at least 1): float16 kernels may round intermediates to
# half where the reference keeps float32.
TOLERANCE = {"float16": 4e-2, "float32": 1e-4}


def tolerances(initial: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Each buffer's tolerance: an output's is its own dtype's, or its inputs' where they are
    coarser (a float32 result of float16 inputs is only as exact as float16); integers and the
    buffers the kernel leaves as they were must come back exactly (0)."""
    changed = {n for n, a in expected.items() if not np.array_equal(a, initial[n], equal_nan=True)}
    inputs = max(
        (TOLERANCE.get(str(a.dtype), 0.0) for n, a in initial.items() if n not in changed),
        default=0.0,
    )
    return {
        n: max(TOLERANCE.get(str(a.dtype), 0.0), inputs) if n in changed else 0.0
        for n, a in expected.items()
    }


def compare(
    expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], tolerance: dict[str, float]
) -> tuple[float, str]:
    """Worst error over the buffers of `expected`, in units of each element's tolerance
    (`tolerance[buffer]` times the element's magnitude, at least 1), and where it is."""
    worst, where = 0.0, ""
    for name, ref in expected.items():
        got = actual[name]
        if ref.dtype.kind != "f" or tolerance[name] == 0.0:
            err = 0.0 if np.array_equal(got, ref, equal_nan=True) else 2.0
        elif ref.size:
            ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
            diff = np.abs(got64 - ref64)
            diff = np.where(np.isnan(diff), np.inf, diff)
            err = float(np.max(diff / (tolerance[name] * np.maximum(1.0, np.abs(ref64)))))
        else:
            err = 0.0
        if err > worst:
            worst, where = err, name
    return worst, where


def check_function(
    lowered: LoweredModule,
    name: str,
    device: Device,
    case: KernelCase | None = None,
    seed: int = 0,
    facts: ModelFacts | None = None,
) -> KernelResult:
    """Run `name` on `device` and on the CPU reference (and, given `facts`, against numpy where
    it has a reference); errors are in tolerance units (<= 1 ok)."""
    host = lowered.host(name)
    kernels = [c.args[0].value for c in launches(host)]
    if case is None:
        case = kv_cache_case(name, host, seed) or random_case(host, np.random.default_rng(seed))
    expected = run_reference(lowered.reference[name], case)
    if all(np.array_equal(expected[n], case.arrays[n]) for n in expected):
        return KernelResult(name, kernels, math.inf, False, f"{name}: inputs compute nothing")
    actual = run_on_device(lowered, name, case, device)
    tolerance = tolerances(case.arrays, expected)
    err, where = compare(expected, actual, tolerance)
    message = f"{name} ({', '.join(kernels)}): buffer {where} off by {err:.3g} x tolerance"
    independent = numpy_reference(name, host, case, facts) if facts is not None else None
    if independent is not None:
        for label, result in (("the device", actual), ("the TIR reference", expected)):
            numpy_err, numpy_where = compare(independent, result, tolerance)
            if numpy_err > err:
                err, where = numpy_err, numpy_where
                message = (
                    f"{name} ({', '.join(kernels)}): {label}'s buffer {where} is off numpy's "
                    f"by {err:.3g} x tolerance"
                )
    checked = independent is not None
    return KernelResult(name, kernels, err, err <= 1.0, message if err > 1.0 else "", checked)


def check_module(
    lowered: LoweredModule,
    device: Device,
    skip: dict[str, str] | None = None,
    facts: ModelFacts | None = None,
) -> list[KernelResult]:
    """Check every kernel-launching function except `skip` (name -> why)."""
    skip = skip or {}
    results = []
    for name in lowered.functions():
        if name in skip:
            continue
        if name not in lowered.reference:
            results.append(KernelResult(name, [], math.inf, False, f"{name}: no CPU reference"))
            continue
        results.append(check_function(lowered, name, device, facts=facts))
    return results


def numpy_checked_kinds(results: list[KernelResult]) -> set[str]:
    """The kinds of kernel (matmul, rms_norm, decode_attention) numpy checked in `results`."""
    return {kind(r.name) for r in results if r.numpy_checked}
