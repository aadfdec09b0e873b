#!/usr/bin/python3
"""st_maxdiff.py A B TOL: the largest |a - b| over two safetensors files' float32 data sections
(what follows the 8-byte header length and the JSON header), printed as %.3g; exit status 1 when
the sections differ in length, are empty, or differ by more than TOL. Standard library only: the MPI
tests compare gathered checkpoints with it (od | awk took ~0.5 s a checkpoint)."""
import array
import struct
import sys


def floats(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        data = f.read()
    a = array.array("f")
    a.frombytes(data[: len(data) // 4 * 4])
    return a


a, b, tol = floats(sys.argv[1]), floats(sys.argv[2]), float(sys.argv[3])
if len(a) != len(b) or not a:
    print("count mismatch")
    sys.exit(1)
d = [abs(x - y) for x, y in zip(a, b)]
m = float("nan") if any(v != v for v in d) else max(d)   # a NaN is never within tolerance
print("%.3g" % m)
sys.exit(0 if m <= tol else 1)
