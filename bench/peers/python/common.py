"""Shared by the Python peer drivers: arguments and the JSON line out."""
import json
import sys


def args():
    out = {}
    argv = sys.argv[2:]
    for i in range(0, len(argv) - 1, 2):
        out[argv[i].lstrip("-")] = argv[i + 1]
    return out


def report(system, n, seconds, **extra):
    print(json.dumps({"system": system, "n": n, "seconds": seconds, "per_second": n / seconds, **extra}), flush=True)
