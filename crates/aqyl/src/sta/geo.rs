//! The geometry `$filter` needs: points and polygons in WGS 84 longitude/latitude, read from
//! WKT literals (`geography'POLYGON((10.1 56.1, ...))'`) and GeoJSON, with `intersects`,
//! `within` and `distance`.
//!
//! Hand-written rather than the `geo` crate: sensors are points, the queries are a point
//! against a polygon or another point, and these few functions are smaller than the crate's
//! dependency tree. Distances are planar in degrees, as FROST-Server answers `geo.distance` on
//! its geometry columns; a city is small enough for that to rank sensors correctly.

use serde_json::Value;

/// A longitude/latitude pair, degrees.
pub type Xy = (f64, f64);

/// Most vertices a literal may have.
pub const MAX_VERTICES: usize = 10_000;

/// A geometry.
#[derive(Debug, Clone, PartialEq)]
pub enum Geometry {
    /// A point.
    Point(Xy),
    /// A polygon: the outer ring, then holes; each ring closed (first = last).
    Polygon(Vec<Vec<Xy>>),
}

/// Parses WKT `POINT(x y)` or `POLYGON((x y, ...), (hole ...))` (x = longitude).
pub fn parse_wkt(text: &str) -> Result<Geometry, String> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let body = |prefix: &str| -> Option<&str> {
        upper.strip_prefix(prefix)?;
        let rest = t[prefix.len()..].trim();
        rest.strip_prefix('(')?.strip_suffix(')')
    };
    if let Some(inner) = body("POINT") {
        return Ok(Geometry::Point(pair(inner)?));
    }
    if let Some(inner) = body("POLYGON") {
        let mut rings = Vec::new();
        let mut rest = inner.trim();
        let mut vertices = 0;
        while !rest.is_empty() {
            let open = rest
                .strip_prefix('(')
                .ok_or_else(|| format!("expected '(' at {rest:?} in the polygon {text:?}"))?;
            let close = open
                .find(')')
                .ok_or_else(|| format!("a ring of the polygon {text:?} is not closed with ')'"))?;
            let ring: Vec<Xy> = open[..close]
                .split(',')
                .map(pair)
                .collect::<Result<_, _>>()?;
            vertices += ring.len();
            if ring.len() < 4 || ring.first() != ring.last() {
                return Err(format!(
                    "a polygon ring needs at least 4 points, the last equal to the first; got {:?}",
                    &open[..close]
                ));
            }
            if vertices > MAX_VERTICES {
                return Err(format!("the polygon has more than {MAX_VERTICES} points"));
            }
            rings.push(ring);
            rest = open[close + 1..].trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
        }
        if rings.is_empty() {
            return Err(format!("the polygon {text:?} has no ring"));
        }
        return Ok(Geometry::Polygon(rings));
    }
    Err(format!(
        "only POINT(lon lat) and POLYGON((lon lat, ...)) geography literals are supported; got {text:?}"
    ))
}

fn pair(text: &str) -> Result<Xy, String> {
    let mut it = text.split_whitespace().map(|n| n.parse::<f64>());
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(x)), Some(Ok(y)), None) if x.is_finite() && y.is_finite() => Ok((x, y)),
        _ => Err(format!(
            "expected a coordinate pair \"lon lat\", got {:?}",
            text.trim()
        )),
    }
}

/// A GeoJSON `Point` or `Polygon` object.
pub fn from_geojson(v: &Value) -> Option<Geometry> {
    let coords = v.get("coordinates")?;
    let xy = |c: &Value| Some((c.get(0)?.as_f64()?, c.get(1)?.as_f64()?));
    match v.get("type")?.as_str()? {
        "Point" => Some(Geometry::Point(xy(coords)?)),
        "Polygon" => {
            let rings: Option<Vec<Vec<Xy>>> = coords
                .as_array()?
                .iter()
                .map(|r| r.as_array()?.iter().map(xy).collect())
                .collect();
            Some(Geometry::Polygon(rings?)).filter(|g| match g {
                Geometry::Polygon(r) => !r.is_empty() && r.iter().all(|r| r.len() >= 4),
                Geometry::Point(_) => true,
            })
        }
        _ => None,
    }
}

/// Whether `p` lies inside `ring` (even-odd rule; a point on an edge counts as inside).
fn in_ring(p: Xy, ring: &[Xy]) -> bool {
    let mut inside = false;
    for w in ring.windows(2) {
        let (a, b) = (w[0], w[1]);
        if segment_distance(p, a, b) < 1e-12 {
            return true;
        }
        if (a.1 > p.1) != (b.1 > p.1) {
            let x = a.0 + (p.1 - a.1) * (b.0 - a.0) / (b.1 - a.1);
            if p.0 < x {
                inside = !inside;
            }
        }
    }
    inside
}

fn in_polygon(p: Xy, rings: &[Vec<Xy>]) -> bool {
    match rings.split_first() {
        Some((outer, holes)) => in_ring(p, outer) && !holes.iter().any(|h| in_ring(p, h)),
        None => false,
    }
}

fn segment_distance(p: Xy, a: Xy, b: Xy) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    };
    let (x, y) = (a.0 + t * dx, a.1 + t * dy);
    ((p.0 - x).powi(2) + (p.1 - y).powi(2)).sqrt()
}

fn segments_cross(a: Xy, b: Xy, c: Xy, d: Xy) -> bool {
    let orient = |p: Xy, q: Xy, r: Xy| (q.0 - p.0) * (r.1 - p.1) - (q.1 - p.1) * (r.0 - p.0);
    let (d1, d2) = (orient(c, d, a), orient(c, d, b));
    let (d3, d4) = (orient(a, b, c), orient(a, b, d));
    ((d1 > 0.0) != (d2 > 0.0)) && ((d3 > 0.0) != (d4 > 0.0))
}

/// Whether the two geometries share a point.
pub fn intersects(a: &Geometry, b: &Geometry) -> bool {
    use Geometry::*;
    match (a, b) {
        (Point(p), Point(q)) => p == q,
        (Point(p), Polygon(r)) | (Polygon(r), Point(p)) => in_polygon(*p, r),
        (Polygon(r), Polygon(s)) => {
            r[0].iter().any(|p| in_polygon(*p, s))
                || s[0].iter().any(|p| in_polygon(*p, r))
                || r.iter().flat_map(|x| x.windows(2)).any(|e| {
                    s.iter()
                        .flat_map(|y| y.windows(2))
                        .any(|f| segments_cross(e[0], e[1], f[0], f[1]))
                })
        }
    }
}

/// Whether `a` lies within `b`.
pub fn within(a: &Geometry, b: &Geometry) -> bool {
    use Geometry::*;
    match (a, b) {
        (Point(p), Point(q)) => p == q,
        (Point(p), Polygon(r)) => in_polygon(*p, r),
        (Polygon(_), Point(_)) => false,
        (Polygon(r), Polygon(s)) => r[0].iter().all(|p| in_polygon(*p, s)),
    }
}

/// The planar distance in degrees (0 when they intersect).
pub fn distance(a: &Geometry, b: &Geometry) -> f64 {
    use Geometry::*;
    if intersects(a, b) {
        return 0.0;
    }
    let edges = |r: &Vec<Vec<Xy>>| {
        r.iter()
            .flat_map(|x| x.windows(2).map(|w| (w[0], w[1])).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    let point_to = |p: Xy, r: &Vec<Vec<Xy>>| {
        edges(r)
            .into_iter()
            .map(|(a, b)| segment_distance(p, a, b))
            .fold(f64::INFINITY, f64::min)
    };
    match (a, b) {
        (Point(p), Point(q)) => ((p.0 - q.0).powi(2) + (p.1 - q.1).powi(2)).sqrt(),
        (Point(p), Polygon(r)) | (Polygon(r), Point(p)) => point_to(*p, r),
        (Polygon(r), Polygon(s)) => r
            .iter()
            .flatten()
            .map(|p| point_to(*p, s))
            .chain(s.iter().flatten().map(|p| point_to(*p, r)))
            .fold(f64::INFINITY, f64::min),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn points_in_a_polygon_with_a_hole() {
        let g = parse_wkt(
            "POLYGON ((10 56, 11 56, 11 57, 10 57, 10 56), (10.4 56.4, 10.6 56.4, 10.6 56.6, 10.4 56.6, 10.4 56.4))",
        )
        .unwrap();
        let p = |x, y| Geometry::Point((x, y));
        assert!(intersects(&p(10.2, 56.2), &g));
        assert!(within(&p(10.2, 56.2), &g));
        assert!(!intersects(&p(10.5, 56.5), &g), "in the hole");
        assert!(!intersects(&p(12.0, 56.5), &g));
        assert!(intersects(&p(10.0, 56.5), &g), "on the edge");
        assert!((distance(&p(12.0, 56.5), &g) - 1.0).abs() < 1e-9);
        assert_eq!(distance(&p(10.2, 56.2), &g), 0.0);
        assert!((distance(&p(0.0, 0.0), &p(3.0, 4.0)) - 5.0).abs() < 1e-12);
    }

    #[test]
    fn polygons_meet_when_they_overlap() {
        let a = parse_wkt("POLYGON((0 0, 2 0, 2 2, 0 2, 0 0))").unwrap();
        let b = parse_wkt("POLYGON((1 1, 3 1, 3 3, 1 3, 1 1))").unwrap();
        let c = parse_wkt("POLYGON((5 5, 6 5, 6 6, 5 6, 5 5))").unwrap();
        let inner = parse_wkt("POLYGON((0.5 0.5, 1 0.5, 1 1, 0.5 0.5))").unwrap();
        assert!(intersects(&a, &b));
        assert!(!intersects(&a, &c));
        assert!(within(&inner, &a));
        assert!(!within(&b, &a));
    }

    #[test]
    fn bad_literals_say_what_is_wrong() {
        for (bad, says) in [
            ("LINESTRING(0 0, 1 1)", "only POINT"),
            ("POINT(1)", "coordinate pair"),
            ("POLYGON((0 0, 1 0, 1 1))", "at least 4 points"),
            ("POLYGON((0 0, 1 0, 1 1, 0 0)", "not closed"),
            ("POLYGON((0 0, 1 0, 1 1, 0 1)", "not closed"),
        ] {
            let e = parse_wkt(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let v: Value = serde_json::json!({"type": "Point", "coordinates": [10.2, 56.1]});
        assert_eq!(from_geojson(&v), Some(Geometry::Point((10.2, 56.1))));
    }
}
