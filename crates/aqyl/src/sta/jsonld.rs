//! A sensor's semantic description in the W3C SOSA/SSN ontology, as JSON-LD, at
//! `/sensors/<type>/<id>.jsonld` (the id percent-encoded): the sensor (`sosa:Sensor`), the
//! platform it is hosted by with its position (`sosa:Platform`, WGS 84 `geo:lat`/`geo:long`),
//! the properties it observes with their units (`sosa:ObservableProperty`), its type's
//! descriptor as the procedure it implements, and its latest reading as one
//! `sosa:Observation` per field. CityPulse described its streams in SSN the same way.

use super::entities::quote_id;
use crate::city::state::SensorState;
use aqyl_core::ingest::descriptor::SensorType;
use serde_json::{json, Value};

/// The JSON-LD document of sensor `s` of type `ty`; `root` is `http://host`.
pub fn sensor(root: &str, s: &SensorState, ty: &SensorType) -> Value {
    let st = &*s.key.sensor_type;
    let thing = format!(
        "{root}/v1.1/Things({})",
        quote_id(&format!("{st}/{}", s.key.sensor_id))
    );
    let me = format!(
        "{root}/sensors/{}/{}",
        super::path::encode_component(st),
        super::path::encode_component(&s.key.sensor_id)
    );
    let property = |f: &str| {
        format!(
            "{root}/v1.1/ObservedProperties({})",
            quote_id(&format!("{st}/{f}"))
        )
    };
    let observes: Vec<Value> = ty
        .fields
        .iter()
        .map(|f| {
            json!({
                "@id": property(&f.name),
                "@type": "sosa:ObservableProperty",
                "rdfs:label": &*f.name,
                "unit": f.unit,
            })
        })
        .collect();
    let latest: Vec<Value> = s
        .latest()
        .map(|r| {
            ty.fields
                .iter()
                .filter_map(|f| {
                    let v = s.value(r, &f.name)?;
                    Some(json!({
                        "@id": format!("{root}/v1.1/Observations({})", quote_id(&format!("{st}/{}/{}/{}", s.key.sensor_id, f.name, r.time))),
                        "@type": "sosa:Observation",
                        "sosa:observedProperty": {"@id": property(&f.name)},
                        "sosa:hasSimpleResult": v,
                        "sosa:phenomenonTime": {"@type": "time:Instant", "time:inXSDDateTimeStamp": aqyl_core::output::rfc3339_ms(r.time as i64)},
                        "sosa:resultTime": aqyl_core::output::rfc3339_ms(r.received_at),
                    }))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut platform = json!({
        "@id": thing,
        "@type": "sosa:Platform",
        "rdfs:label": format!("{st} sensor {}", s.key.sensor_id),
    });
    if let Some((lat, lon)) = s.position {
        platform["geo:lat"] = json!(lat);
        platform["geo:long"] = json!(lon);
    }
    if let Some(area) = &s.area {
        platform["schema:containedInPlace"] = json!(area);
    }
    json!({
        "@context": {
            "sosa": "http://www.w3.org/ns/sosa/",
            "ssn": "http://www.w3.org/ns/ssn/",
            "geo": "http://www.w3.org/2003/01/geo/wgs84_pos#",
            "time": "http://www.w3.org/2006/time#",
            "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
            "schema": "http://schema.org/",
            "unit": "http://schema.org/unitCode",
        },
        "@id": me,
        "@type": "sosa:Sensor",
        "rdfs:label": s.key.sensor_id,
        "sosa:isHostedBy": platform,
        "sosa:observes": observes,
        "ssn:implements": {
            "@id": format!("{root}/v1.1/Sensors({})", quote_id(st)),
            "@type": "sosa:Procedure",
            "rdfs:label": format!("Aqyl sensor type {st}"),
            "rdfs:comment": format!("expected to report every {}", aqyl_core::duration::label(ty.expected_interval)),
        },
        "sosa:madeObservation": latest,
    })
}

/// Splits `/sensors/<type>/<id>.jsonld` (after `/sensors/`, still encoded) into type and id.
pub fn parse_path(rest: &str) -> Option<(String, String)> {
    let rest = rest.strip_suffix(".jsonld")?;
    let (ty, id) = rest.split_once('/')?;
    let decode = |s: &str| super::query::decode_component(&s.replace('+', "%2B"));
    Some((decode(ty), decode(id))).filter(|(t, i)| !t.is_empty() && !i.is_empty())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_come_back_from_their_links() {
        assert_eq!(
            parse_path("traffic/a%2Fb%20c+d.jsonld"),
            Some(("traffic".into(), "a/b c+d".into()))
        );
        assert_eq!(
            parse_path("traffic/a/b.jsonld"),
            Some(("traffic".into(), "a/b".into()))
        );
        assert_eq!(parse_path("traffic/.jsonld"), None);
        assert_eq!(parse_path("traffic/x.json"), None);
    }
}
