"""The machine's fp32 FMA and bf16 dot-product peaks (benchmarks/peaks.c, compiled here with the
system's C compiler), measured in the calling process so that benchmarks quote fractions of the
peaks of the machine they ran on, not of another one of its kind.

    python benchmarks/peaks.py             # prints both, at 1 and 2 threads
"""
import ctypes
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent


def _library():
    out = pathlib.Path(tempfile.gettempdir()) / f"herbs_peaks_{os.getuid()}.so"
    source = HERE / "peaks.c"
    if not out.exists() or out.stat().st_mtime < source.stat().st_mtime:
        cc = os.environ.get("CC", "cc")
        subprocess.run([cc, "-O3", "-fopenmp", "-shared", "-fPIC", str(source), "-o", str(out)], check=True)
    lib = ctypes.CDLL(str(out))
    for name in ("peak_fp32", "peak_bf16"):
        getattr(lib, name).restype = ctypes.c_double
        getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_double]
    return lib


def measure(threads, seconds=0.5, repeats=3):
    """{'fp32': GF/s, 'bf16': GF/s (0 without AVX512-BF16)} over `threads` threads, the best of
    `repeats` runs (a peak: the least disturbed run is the truest)."""
    lib = _library()
    return {"fp32": max(lib.peak_fp32(threads, seconds) for _ in range(repeats)),
            "bf16": max(lib.peak_bf16(threads, seconds) for _ in range(repeats))}


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from common import machine
    print(machine())
    for t in (1, 2):
        p = measure(t)
        print(f"{t} thread(s): fp32 FMA {p['fp32']:.0f} GF/s, bf16 dot {p['bf16']:.0f} GF/s")
