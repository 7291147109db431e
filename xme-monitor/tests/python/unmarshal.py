"""Reads hex frames (one per line) made by xme's XmeWire codec, unmarshals
each with the Python package's Monitor().unmarshal, and prints the resulting
map as json.dumps(..., sort_keys=True), one line per frame."""
import json, sys
from XME.Manager.Monitor import Monitor

m = Monitor()
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    m.delete()
    m.unmarshal(bytes.fromhex(line))
    print(json.dumps(dict(m.get()), sort_keys=True))
