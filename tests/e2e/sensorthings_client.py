"""Drives Aqyl's SensorThings API with an independent client, FROST's `frost-sta-client`.

    python sensorthings_client.py URL PUBLISHED.json

PUBLISHED.json lists what the simulator published: [{"topic": ..., "payload": {...}}, ...].
The script lists Things and Datastreams (following @iot.nextLink pages), filters them by
location and by property, reads each traffic segment's avgSpeed Observations and compares
them with the published readings (CityPulse rows: avgSpeed at TIMESTAMP, Copenhagen local
time), and prints one JSON line of what it checked. Any mismatch raises (exit status 1).
"""

import json
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import frost_sta_client as fsc

url, published_file = sys.argv[1], sys.argv[2]
with open(published_file) as f:
    published = json.load(f)
service = fsc.SensorThingsService(url)
checked = {}


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


# Every published sensor is a Thing; the listing comes in pages of 4 and the client follows
# @iot.nextLink.
sensors = {(m["topic"].split("/")[1], m["topic"].split("/")[2]) for m in published}
things = service.things().query().count().top(4).list()
expect(things.next_link is not None, "a first page of 4 has a next link")
listed = {(t.properties["type"], t.name): t for t in things}
expect(set(listed) == sensors, f"Things {sorted(listed)} != published {sorted(sensors)}")
expect(things.count == len(sensors), f"@iot.count {things.count} != {len(sensors)}")
checked["things"] = len(listed)

# Datastreams: one per sensor and field; by property through navigation.
datastreams = list(service.datastreams().query().top(1000).list())
speed = list(
    service.datastreams()
    .query()
    .filter("ObservedProperty/name eq 'avgSpeed' and Thing/properties/type eq 'traffic'")
    .list()
)
traffic = sorted(i for (t, i) in sensors if t == "traffic")
expect(sorted(d.name for d in speed) == [f"{i}/avgSpeed" for i in traffic], f"avgSpeed datastreams: {[d.name for d in speed]}")
expect(all(d.unit_of_measurement.symbol == "km/h" for d in speed), "avgSpeed is in km/h")
checked["datastreams"] = len(datastreams)

# By property of the Thing, with substringof.
by_type = service.things().query().filter("properties/type eq 'parking'").list()
parking = sorted(i for (t, i) in sensors if t == "parking")
expect(sorted(t.name for t in by_type) == parking, f"parking Things: {[t.name for t in by_type]}")
sub = service.things().query().filter(f"substringof('{traffic[0][:4]}', name) and properties/type eq 'traffic'").list()
expect(sorted(t.name for t in sub) == [i for i in traffic if traffic[0][:4] in i], "substringof")

# By location: a box around the first located Thing; the server's answer must be exactly the
# Things whose Location lies in the box.
locations = list(service.locations().query().top(1000).expand("Things").list())
expect(len(locations) > 0, "some Things have a Location")


def lonlat(loc):
    geo = loc.location
    coords = geo["coordinates"] if isinstance(geo, dict) else geo.coordinates
    return coords[0], coords[1]


x0, y0 = lonlat(locations[0])
d = 0.02
box = f"POLYGON(({x0 - d} {y0 - d}, {x0 + d} {y0 - d}, {x0 + d} {y0 + d}, {x0 - d} {y0 + d}, {x0 - d} {y0 - d}))"
inside = service.things().query().filter(f"geo.intersects(Locations/location, geography'{box}')").top(1000).list()
want = set()
for loc in locations:
    x, y = lonlat(loc)
    if abs(x - x0) <= d and abs(y - y0) <= d:
        want.update(t.id for t in loc.things)
got = {t.id for t in inside}
expect(got == want and len(got) >= 1, f"Things in the box: {sorted(got)} != {sorted(want)}")
near = service.things().query().filter(f"geo.distance(Locations/location, geography'POINT({x0} {y0})') lt {d}").top(1000).list()
want_near = set()
for loc in locations:
    x, y = lonlat(loc)
    if ((x - x0) ** 2 + (y - y0) ** 2) ** 0.5 < d:
        want_near.update(t.id for t in loc.things)
expect({t.id for t in near} == want_near, "geo.distance")
checked["in_box"] = len(got)

# Observations: each traffic segment's avgSpeed, newest first, against what was published.
copenhagen = ZoneInfo("Europe/Copenhagen")
compared = 0
for d in speed:
    sensor_id = d.name.split("/")[0]
    rows = [m["payload"] for m in published if m["topic"] == f"city/traffic/{sensor_id}"]
    sent = {}
    for row in rows:
        local = datetime.strptime(row["TIMESTAMP"], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=copenhagen)
        sent[local.astimezone(timezone.utc)] = float(row["avgSpeed"])
    observations = list(d.get_observations().query().list())
    expect(len(observations) >= min(len(sent), 16), f"{d.name}: {len(observations)} observations for {len(sent)} readings")
    times = []
    for o in observations:
        t = datetime.fromisoformat(o.phenomenon_time.replace("Z", "+00:00"))
        expect(t in sent, f"{d.name}: no reading was published at {t}")
        expect(o.result == sent[t], f"{d.name} at {t}: {o.result} != published {sent[t]}")
        times.append(t)
        compared += 1
    expect(times == sorted(times, reverse=True), "newest first")
    expect(times[0] == max(sent), f"{d.name}: the latest reading {max(sent)} is listed first")
latest = service.observations().query().filter(f"Datastream/Thing/name eq '{traffic[0]}' and result ge 0").orderby("phenomenonTime", "DESC").top(1).list()
expect(len(latest.entities) == 1, "the latest observation of a segment by $filter and $orderby")
checked["observations"] = compared

# An unknown entity is a 404 the client reports.
try:
    service.things().find("traffic/no-such-sensor")
    raise AssertionError("an unknown Thing was found")
except AssertionError:
    raise
except Exception as e:  # the client raises its own error type for HTTP errors
    expect("404" in str(e) or "Not Found" in str(e) or "no Things" in str(e), f"unexpected error {e!r}")

print(json.dumps(checked))
