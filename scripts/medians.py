#!/usr/bin/env python3
"""Prints the median of every criterion benchmark under target/criterion.

Usage: cargo bench --bench NAME && python3 scripts/medians.py [filter]
"""
import json
import pathlib
import sys

root = pathlib.Path("target/criterion")
flt = sys.argv[1] if len(sys.argv) > 1 else ""


def fmt(ns):
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            return f"{ns / div:.3g} {unit}"
    return f"{ns:.3g} ns"


for est in sorted(root.glob("**/new/estimates.json")):
    bench = est.parent.parent.relative_to(root).as_posix()
    if flt in bench:
        median = json.loads(est.read_text())["median"]["point_estimate"]
        print(f"{bench:50} {fmt(median)}")
