#!/usr/bin/env python3
"""Compares `aqyl replay --out DIR` line protocol with reference.py's output.

    compare.py DIR/aggregate.lp REFERENCE_FILE

Turns the `aggregate` lines (count, mean, min and max of each window) and the `event` lines
(state, time, start = time - duration_s) into reference.py's format, sorted, and exits
non-zero at the first difference. Values are compared as floats written with repr().
"""

import sys


def tags_fields(line):
    head, fields, time = line.rsplit(" ", 2)
    measurement, *tags = head.split(",")
    tags = dict(t.split("=", 1) for t in tags)
    fields = dict(f.split("=", 1) for f in fields.split(","))
    return measurement, tags, fields, int(time)


def canonical(lp_file):
    lines = []
    with open(lp_file) as f:
        for line in f:
            measurement, tags, fields, time = tags_fields(line.rstrip("\n"))
            if measurement == "aggregate" and tags.get("window") == "1h":
                count = int(fields["count"].rstrip("i"))
                mean, lo, hi = (float(fields[k]) for k in ("mean", "min", "max"))
                lines.append(
                    f"W {tags['sensor_id']} {tags['field']} {time - 3_600_000} {count} "
                    f"{mean!r} {lo!r} {hi!r}\n"
                )
            elif measurement == "event" and tags.get("event_type") == "congestion":
                started = time - round(float(fields["duration_s"]) * 1000)
                lines.append(f"E {tags['subject']} {tags['state']} {time} {started}\n")
    lines.sort()
    return lines


def main(lp_file, reference_file):
    ours = canonical(lp_file)
    with open(reference_file) as f:
        theirs = f.readlines()
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            sys.exit(f"first difference at sorted line {i + 1}:\n  aqyl:      {a}  reference: {b}")
    if len(ours) != len(theirs):
        sys.exit(f"aqyl gave {len(ours)} lines, the reference {len(theirs)}")
    windows = sum(1 for line in ours if line.startswith("W"))
    starts = sum(1 for line in ours if " start " in line)
    ends = sum(1 for line in ours if " end " in line)
    print(f"identical: {windows} windows, {starts} congestion starts, {ends} ends")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: compare.py AGGREGATE_LP REFERENCE_FILE")
    main(sys.argv[1], sys.argv[2])
