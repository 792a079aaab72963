#!/usr/bin/env python3
"""The citypulse-hourly workload in plain, single-threaded Python (csv module and dicts).

    reference.py DATA_DIR OUT_FILE

Reads every AarhusTrafficData<REPORT_ID>.csv in DATA_DIR (the CityPulse Aarhus traffic
dataset), TIMESTAMP read as UTC, and writes to OUT_FILE, one line each, sorted:

    W <sensor> <field> <window start ms> <count> <mean> <min> <max>
    E <sensor> <start|end> <time ms> <started at ms>

for the 1-hour tumbling windows of avgSpeed, vehicleCount and avgMeasuredTime and the
congestion rule (enter: avgSpeed <= 35 and vehicleCount >= 10; exit: avgSpeed > 35 and
vehicleCount < 10) as `aqyl replay` computes them with benches/citypulse-hourly/config:

- a row repeating a sensor's earlier row (same time, same values) is a duplicate: dropped;
- the rule judges a sensor's rows in file order, skipping a row not newer than the sensor's
  newest judged row (rule_timing = "arrival");
- at the end of input every ongoing incident ends, at the newest event time of the whole
  input (the replay forgets every sensor then: `pipeline.state_ttl`).

Each sensor's rows are in one file, and every result depends only on a sensor's own rows in
file order and on the newest time of all, so the files are read one after the other: the
replay's merge by event time changes nothing here. (Mid-stream, a sensor silent for a day
while congested would have its incident ended by the TTL; this data has none, as the identical
outputs show.)
"""

import csv
import os
import re
import sys
from datetime import datetime, timezone

FIELDS = ("avgSpeed", "vehicleCount", "avgMeasuredTime")
HOUR = 3_600_000
NAME = re.compile(r"^AarhusTrafficData(.+)\.csv$")


def utc_ms(text, cache={}):
    ms = cache.get(text)
    if ms is None:
        t = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
        ms = cache[text] = int(t.timestamp()) * 1000
    return ms


def main(data_dir, out_file):
    windows = {}  # (sensor, field index, start) -> values
    events = []
    now = 0
    for name in sorted(os.listdir(data_dir)):
        m = NAME.match(name)
        if m:
            now = max(now, replay_file(os.path.join(data_dir, name), m.group(1), windows, events))
    # The ongoing incidents end at the end of input.
    ongoing = {}
    for state, sensor, t, started in events:
        ongoing[sensor] = started if state == "start" else None
    for sensor, started in ongoing.items():
        if started is not None:
            events.append(("end", sensor, now, started))
    write(out_file, windows, events)


def replay_file(path, sensor, windows, events):
    """Adds one sensor's rows to `windows` and its incidents to `events`; returns its newest
    event time."""
    seen = set()  # (time, values)
    newest = None  # time of the newest judged row
    started = None  # start of the ongoing incident
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        ts = header.index("TIMESTAMP")
        cols = [header.index(k) for k in FIELDS]
        for row in rows:
            t = utc_ms(row[ts])
            values = tuple(float(row[c]) for c in cols)
            if (t, values) in seen:
                continue
            seen.add((t, values))
            hour = t - t % HOUR
            for i, v in enumerate(values):
                key = (sensor, i, hour)
                if key in windows:
                    windows[key].append(v)
                else:
                    windows[key] = [v]
            if newest is not None and t <= newest:
                continue
            newest = t
            speed, count = values[0], values[1]
            if started is not None:
                if speed > 35 and count < 10:
                    events.append(("end", sensor, t, started))
                    started = None
            elif speed <= 35 and count >= 10:
                started = t
                events.append(("start", sensor, t, t))
    return max(t for t, _ in seen) if seen else 0


def write(out_file, windows, events):
    lines = []
    for (sensor, i, start), values in windows.items():
        values.sort()
        n = len(values)
        mean = sum(values) / n
        lines.append(
            f"W {sensor} {FIELDS[i]} {start} {n} {mean!r} {values[0]!r} {values[-1]!r}\n"
        )
    for state, sensor, t, started in events:
        lines.append(f"E {sensor} {state} {t} {started}\n")
    lines.sort()
    with open(out_file, "w") as f:
        f.writelines(lines)
    starts = sum(1 for e in events if e[0] == "start")
    print(
        f"windows {len(windows)} starts {starts} ends {len(events) - starts}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: reference.py DATA_DIR OUT_FILE")
    main(sys.argv[1], sys.argv[2])
