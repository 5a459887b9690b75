#!/usr/bin/env python3
"""Self cost per function of a callgrind dump (the dumps `bench/run --profile` keeps), and the
inclusive cost of the functions whose name matches a filter. callgrind_annotate 3.19 puts a
whole dump taken after `callgrind_control -z` on `clone`; this reads the file itself.

    bench/callgrind_self.py target/bench-profile-logged-in-hs256.callgrind [N] [--per REQUESTS]
"""
import re
import sys
from collections import defaultdict


def parse(path):
    self_cost = defaultdict(int)
    incl_calls = defaultdict(int)
    fn = None
    cfn = None
    after_calls = False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if line.startswith("fn="):
            fn = line[3:]
            after_calls = False
        elif line.startswith("cfn="):
            cfn = line[4:]
        elif line.startswith("calls="):
            after_calls = True
        elif line and (line[0].isdigit() or line[0] in "+-*"):
            parts = line.split()
            if len(parts) < 2:
                continue
            cost = int(parts[1])
            if after_calls:
                incl_calls[(fn, cfn)] += cost
                after_calls = False
            elif fn is not None:
                self_cost[fn] += cost
    return self_cost, incl_calls


def main():
    args = sys.argv[1:]
    per = 1
    if "--per" in args:
        i = args.index("--per")
        per = int(args[i + 1])
        del args[i : i + 2]
    path = args[0]
    top = int(args[1]) if len(args) > 1 else 40
    self_cost, _ = parse(path)
    total = sum(self_cost.values())
    print(f"total self cost {total:,} ({total / per:,.0f} per request)")
    for name, cost in sorted(self_cost.items(), key=lambda kv: -kv[1])[:top]:
        short = re.sub(r"\s+", " ", name)[:150]
        print(f"{cost / per:10,.0f} {100 * cost / total:5.1f}%  {short}")


if __name__ == "__main__":
    main()
