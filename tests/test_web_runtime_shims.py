"""Our headers for the TVM web runtime (`targets/web_runtime_shims`), compiled natively with g++:
the binary formats libtvm writes (the VM executable, the WebGPU shader table) read back
byte for byte, and the float16 conversions agree with numpy on every value."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm_ffi

from mlc.targets.web_runtime import SHIMS_DIR

CHECK_SOURCE = Path(__file__).parent / "data" / "web_runtime_shims_check.cc"


@pytest.fixture(scope="module")
def check_program(tmp_path_factory) -> Path:
    ffi = Path(tvm_ffi.__file__).parent
    exe = tmp_path_factory.mktemp("shims") / "check"
    includes = [
        SHIMS_DIR / "include",
        SHIMS_DIR,
        SHIMS_DIR / "3rdparty" / "compiler-rt",
        ffi / "include",
        ffi / "3rdparty" / "dlpack" / "include",
    ]
    cmd = ["g++", "-std=c++17", "-O1", *(f"-I{d}" for d in includes), str(CHECK_SOURCE)]
    cmd += ["-o", str(exe), f"-L{ffi / 'lib'}", "-ltvm_ffi", f"-Wl,-rpath,{ffi / 'lib'}"]
    subprocess.run(cmd, check=True)
    return exe


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def string(s: bytes) -> bytes:
    return u64(len(s)) + s


@pytest.fixture(scope="module")
def run(check_program, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shims_run")
    rng = np.random.default_rng(0)
    halves = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    specials = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            65504,
            65520,
            65519.99,
            1e-8,
            6e-8,
            2.98e-8,
            2.99e-8,
            1e30,
            -1e-30,
        ],
        np.float32,
    )
    with np.errstate(invalid="ignore"):  # neighbours inf and NaN make NaN: fine
        between = (halves[:-1] + halves[1:]) / 2  # exact ties: round to even
        values = np.concatenate([specials, halves, between, rng.normal(0, 100, 20000)])
        values = values.astype(np.float32)
    (tmp / "in.bin").write_bytes(values.tobytes())
    result = subprocess.run(
        [str(check_program), str(tmp / "in.bin"), str(tmp / "out.bin")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    out = (tmp / "out.bin").read_bytes()
    return values, out, result.stdout.splitlines()


def test_fp16_widening_is_exact(run):
    _, out, _ = run
    got = np.frombuffer(out[: 4 * 65536], np.float32)
    want = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    assert np.array_equal(
        got.view(np.uint32)[~np.isnan(want)], want.view(np.uint32)[~np.isnan(want)]
    )
    assert np.isnan(got[np.isnan(want)]).all()


def test_fp16_narrowing_rounds_to_nearest_even(run):
    values, out, _ = run
    got = np.frombuffer(out[4 * 65536 :], np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):
        want = values.astype(np.float16)
    nan = np.isnan(want)
    assert np.array_equal(got[~nan], want.view(np.uint16)[~nan])
    assert np.isnan(got[nan].view(np.float16)).all()


def test_serialized_bytes_match_tvm_format(run):
    _, _, lines = run
    dtype = struct.pack("<BBH", 2, 32, 1)
    expected = b"".join(
        [
            string(b"abc"),
            u64(2) + struct.pack("<qq", 1, -2),
            u64(1) + string(b"k") + string(b"vv"),
            u64(2) + string(b"ab") + string(b""),
            u64(1) + string(b"f") + u64(1) + string(b"x"),
            dtype,
            struct.pack("<ii", 15, 3),  # kDLWebGPU = 15
            struct.pack("<iB", 7, 9),
        ]
    )
    assert bytes.fromhex(lines[0]) == expected


def test_base64_matches_python_and_round_trips(run):
    _, _, lines = run
    for n, text in zip([0, 1, 2, 3, 4, 256], lines[1:7], strict=True):
        data = bytes((i * 37 + 11) & 255 for i in range(n))
        assert text == base64.b64encode(data).decode()
    assert lines[-1] == "ok"  # the ring buffer, arena and string helpers passed their checks
