#!/usr/bin/env python3
"""Builds aarhus-traffic.csv, the sensor registry of the CityPulse Aarhus traffic segments.

Usage: python3 config/sensors/registry/build_aarhus_traffic.py CITYPULSE_DIR/metadata/trafficMetaData.csv

For each segment (REPORT_ID) it writes the mid-point of its two end points and an area: the
cell of a grid of 0.02 degrees latitude by 0.035 degrees longitude (about 2.2 km x 2.2 km at
Aarhus' latitude) holding the mid-point, named grid-<row>-<col> counted from 56.0 N, 10.0 E.
A grid rather than districts because the dataset carries no district boundaries; cells are
small enough that a cell's segments see the same traffic conditions, and large enough that
most hold several segments, which area rules (k of n sensors) need.
"""
import csv
import math
import sys

LAT0, LON0, DLAT, DLON = 56.0, 10.0, 0.02, 0.035


def main(path):
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            lat = (float(r["POINT_1_LAT"]) + float(r["POINT_2_LAT"])) / 2
            lon = (float(r["POINT_1_LNG"]) + float(r["POINT_2_LNG"])) / 2
            row = math.floor((lat - LAT0) / DLAT)
            col = math.floor((lon - LON0) / DLON)
            rows.append((int(r["REPORT_ID"]), lat, lon, f"grid-{row:02d}-{col:02d}"))
    rows.sort()
    out = sys.stdout
    out.write("# Aarhus traffic segments (CityPulse trafficMetaData.csv): mid-point and a grid-cell area.\n")
    out.write("# Built by build_aarhus_traffic.py; see its docstring for the grid.\n")
    out.write("sensor_id,lat,lon,area\n")
    for rid, lat, lon, area in rows:
        out.write(f"{rid},{lat:.6f},{lon:.6f},{area}\n")


if __name__ == "__main__":
    main(sys.argv[1])
