#!/usr/bin/python3
"""Turns the golden vectors (tests/vectors/*.hex) into binary fuzz seeds:
hex2bin.py OUTDIR VECTOR.hex... Each seed gets a leading split-pattern byte
(see fuzz_frame.c); one more seed holds every vector back to back."""
import os
import re
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
everything = b""
for path in sys.argv[2:]:
    with open(path) as f:
        data = bytes.fromhex("".join(re.sub(r"#[^\n]*", "", f.read()).split()))
    everything += data
    name = os.path.splitext(os.path.basename(path))[0]
    with open(os.path.join(out, name + ".bin"), "wb") as f:
        f.write(b"\x01" + data)
with open(os.path.join(out, "all.bin"), "wb") as f:
    f.write(b"\x07" + everything)
