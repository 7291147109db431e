"""Makes the XME wire test vectors with the Python package XME 4.2.5.

Run: python make_vectors.py > vectors.json
Each vector: a name, and the bytes the package's Monitor byte transform
makes from json.dumps of the message (the package's own Monitor.marshal()
raises on its DictProxy, so the transform is called directly, as in marshal).
"""
import json, sys
from XME.Manager.Monitor import Monitor

CASES = {
    "empty": {},
    "flat": {"a": 1, "b": "two", "c": True, "d": None, "e": False},
    "nested": {"outer": {"inner": {"deep": [1, [2, [3, {"x": []}]]]}}, "list": [{}, [], ""]},
    "integers": {"big": 2**53 + 1, "bigger": 2**64 + 7, "huge": 2**100, "neg": -2**63, "zero": 0, "minus": -42},
    "floats": {"tenth": 0.1, "one": 1.0, "negzero": -0.0, "e16": 1e16, "e15": 1e15, "small": 1e-05,
               "tiny": 5e-324, "max": 1.7976931348623157e308, "frac": 123456789.125, "neg": -2.5e-07},
    "strings": {"quote": "say \"hi\"", "backslash": "a\\b", "slash": "a/b", "controls": "\x00\x01\x1f\x7f\n\r\t\b\f",
                "latin": "caf\u00e9", "cjk": "\u4e2d\u6587", "emoji": "\U0001F600", "mixed": "\u00e9\x00\U0001F680z"},
    "unicode keys": {"cl\u00e9": 1, "\u4e2d": [True], "\U0001F600": {"\x01": None}},
    "order": {"z": 1, "a": 2, "m": 3},
}

def transform(b):
    # The package's Monitor.__compact_data__, called without its Manager().
    return Monitor.__compact_data__(None, b)

out = []
for name, msg in CASES.items():
    wire = transform(json.dumps(msg).encode("utf-8"))
    out.append({"name": name, "wire_hex": wire.hex()})
json.dump(out, sys.stdout, indent=1)
sys.stdout.write("\n")
