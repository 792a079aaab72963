//! The sensor catalogue as the OGC SensorThings API 1.1 (read), at `/v1.1`, over the live
//! city state ([`crate::city::state`]) and the sensor types; and each sensor's SOSA/SSN
//! description as JSON-LD ([`jsonld`]).
//!
//! - [`entities`]: the entity sets, ids, links and navigation.
//! - [`query`]: `$top`, `$skip`, `$count`, `$orderby`, `$select`, `$expand`.
//! - [`filter`]: the `$filter` parser and evaluator; [`geo`]: its geometry.
//! - [`path`]: resource paths such as `Things('traffic%2F158324')/Datastreams`.
//!
//! Answers follow the standard: collections as `{"value": [...]}` with `@iot.count` when
//! asked and `@iot.nextLink` while more remain; 404 for an unknown entity or set, 400 with a
//! message for a query that cannot be answered, both as `{"code", "type": "error",
//! "message"}`.

pub mod entities;
pub mod filter;
pub mod geo;
pub mod jsonld;
pub mod path;
pub mod query;

use crate::city::state::CityState;
use aqyl_dataflow::SharedRegistry;
use entities::{navs, Ctx, Ent, Nav, Set};
use filter::Resolve;
use query::Options;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Most entities one request may examine (a filter over every kept Observation of a big
/// city would otherwise hold a connection for seconds); past it the client is asked to
/// narrow the request.
pub const MAX_SCAN: usize = 200_000;

/// What the catalogue reads.
#[derive(Clone)]
pub struct Catalogue {
    /// The live city state.
    pub state: Arc<CityState>,
    /// The sensor types (reloaded while running).
    pub registry: SharedRegistry,
}

/// An answer: status, content type and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Answer {
    fn json(v: &Value) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: v.to_string(),
        }
    }

    /// An error in the standard's shape.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: json!({"code": status, "type": "error", "message": message.into()}).to_string(),
        }
    }
}

type Fail = (u16, String);

fn bad(msg: impl Into<String>) -> Fail {
    (400, msg.into())
}

fn missing(msg: impl Into<String>) -> Fail {
    (404, msg.into())
}

impl Catalogue {
    /// The request's view: the current sensor types and the sensors now. `root` is
    /// `http://host`, for links.
    pub fn ctx(&self, root: &str) -> Ctx {
        Ctx {
            registry: self.registry.load_full(),
            sensors: self.state.sensors(),
            base: format!("{root}/v1.1"),
            work: std::cell::Cell::new(0),
        }
    }

    /// Answers `GET /v1.1<path>?<query>` (`path` and `query` as sent, still
    /// percent-encoded).
    pub fn get(&self, root: &str, path: &str, query: &str) -> Answer {
        let ctx = self.ctx(root);
        match answer(&ctx, path, query) {
            _ if ctx.exhausted() => Answer::error(
                400,
                format!(
                    "the request would visit more than {} entities (nested $expand, or $filter paths through navigation); narrow it",
                    entities::MAX_WORK
                ),
            ),
            Ok(a) => a,
            Err((status, message)) => Answer::error(status, message),
        }
    }
}

/// Most sensors one `/api/state` answer lists when no `limit` is given, and at most.
pub const STATE_LIMIT: usize = 100_000;

/// Answers `GET /api/state?<query>`: `type`, `area`, `id` and `bbox` select, `offset` and
/// `limit` page.
pub fn state_answer(state: &crate::city::state::CityState, query: &str) -> Answer {
    let params = query::pairs(query);
    let pairs = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let sel = match crate::city::select::Selection::from_query(pairs) {
        Ok(s) => s,
        Err(e) => return Answer::error(400, e),
    };
    let number = |key: &str, default: usize| -> Result<usize, String> {
        match params.iter().find(|(k, _)| k == key) {
            None => Ok(default),
            Some((_, v)) => v
                .parse()
                .map_err(|_| format!("{key} must be a whole number, got {v:?}")),
        }
    };
    match (number("offset", 0), number("limit", STATE_LIMIT)) {
        (Ok(offset), Ok(limit)) => {
            Answer::json(&state.select(&sel, offset, limit.min(STATE_LIMIT)))
        }
        (Err(e), _) | (_, Err(e)) => Answer::error(400, e),
    }
}

impl Catalogue {
    /// Answers `GET /v1.1/Things(<id>)` asked for with `Accept: application/ld+json` (content
    /// negotiation): the Thing's SOSA/SSN description; `None` for any other path.
    pub fn thing_jsonld(&self, root: &str, path: &str) -> Option<Answer> {
        let segments = path::parse(path).ok()?;
        let [path::Segment { name, id: Some(id) }] = segments.as_slice() else {
            return None;
        };
        if name != "Things" {
            return None;
        }
        let (ty, sensor) = id.split_once('/')?;
        Some(self.describe(root, ty, sensor))
    }

    /// Answers `GET /sensors/<rest>`: a sensor's SOSA/SSN description.
    pub fn jsonld_answer(&self, root: &str, rest: &str) -> Answer {
        let Some((ty, id)) = jsonld::parse_path(rest) else {
            return Answer::error(
                404,
                "a sensor's description is at /sensors/<type>/<id>.jsonld (the id percent-encoded)",
            );
        };
        self.describe(root, &ty, &id)
    }

    fn describe(&self, root: &str, ty: &str, id: &str) -> Answer {
        let registry = self.registry.load_full();
        match (self.state.sensor(ty, id), registry.get(ty)) {
            (Some(s), Some(t)) => Answer {
                status: 200,
                content_type: "application/ld+json",
                body: jsonld::sensor(root, &s, t).to_string(),
            },
            _ => Answer::error(404, format!("no {ty} sensor {id:?} has reported")),
        }
    }
}

/// What a resource path addresses.
enum Target {
    Root,
    /// A whole entity set.
    Set(Set),
    /// A navigation collection and its URL.
    List(Vec<Ent>, String),
    Entity(Ent),
    /// A property of an entity (`/name`), or its raw value (`/name/$value`).
    Property(Ent, String, bool),
}

fn answer(ctx: &Ctx, path: &str, query: &str) -> Result<Answer, Fail> {
    let segments = path::parse(path).map_err(bad)?;
    let params = query::pairs(query);
    let opts = Options::parse(params.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(bad)?;
    let mut target = Target::Root;
    for seg in &segments {
        target = match (target, seg) {
            (Target::Root, seg) => {
                let set = Set::by_name(&seg.name).ok_or_else(|| {
                    missing(format!(
                        "no entity set {:?}; there are {}",
                        seg.name,
                        Set::ALL.map(Set::name).join(", ")
                    ))
                })?;
                match &seg.id {
                    Some(id) => Target::Entity(
                        ctx.by_id(set, id)
                            .ok_or_else(|| missing(format!("no {} with id {id:?}", set.name())))?,
                    ),
                    None => Target::Set(set),
                }
            }
            (Target::Entity(e), seg) if navs(&e).contains(&seg.name.as_str()) => {
                let link = format!("{}/{}", ctx.self_link(&e), seg.name);
                match (ctx.navigate(&e, &seg.name), &seg.id) {
                    (Some(Nav::Many(list)), Some(id)) => Target::Entity(
                        list.into_iter()
                            .find(|x| entities::id(x) == *id)
                            .ok_or_else(|| {
                                missing(format!("no {} with id {id:?} here", seg.name))
                            })?,
                    ),
                    (Some(Nav::Many(list)), None) => Target::List(list, link),
                    (Some(Nav::One(Some(x))), None) => Target::Entity(x),
                    _ => return Err(missing(format!("nothing at {}", seg.name))),
                }
            }
            (Target::Entity(e), seg) if seg.id.is_none() => {
                if !ctx.json(&e).contains_key(&seg.name) {
                    return Err(missing(format!(
                        "{} has no property or navigation {:?}",
                        entities::set_of(&e).name(),
                        seg.name
                    )));
                }
                Target::Property(e, seg.name.clone(), false)
            }
            (Target::Property(e, name, false), seg) if seg.name == "$value" && seg.id.is_none() => {
                Target::Property(e, name, true)
            }
            (_, seg) => {
                return Err(bad(format!(
                    "{:?} cannot follow here: address one entity with (id) before its properties",
                    seg.name
                )))
            }
        };
    }
    let self_url = format!("{}{}", ctx.base, path::canonical(&segments));
    Ok(match target {
        Target::Root => Answer::json(&root(ctx)),
        Target::Set(set) => Answer::json(&collection(
            ctx,
            ctx.all(set),
            &opts,
            &self_url,
            Some(&params),
        )?),
        Target::List(list, link) => Answer::json(&collection(
            ctx,
            list.into_iter(),
            &opts,
            &link,
            Some(&params),
        )?),
        Target::Entity(e) => Answer::json(&Value::Object(render(ctx, &e, &opts)?)),
        Target::Property(e, name, raw) => {
            let v = ctx.json(&e).remove(&name).unwrap_or(Value::Null);
            if raw {
                Answer {
                    status: 200,
                    content_type: "text/plain; charset=utf-8",
                    body: match v {
                        Value::String(s) => s,
                        v => v.to_string(),
                    },
                }
            } else {
                Answer::json(&json!({ name: v }))
            }
        }
    })
}

/// The service document.
fn root(ctx: &Ctx) -> Value {
    json!({
        "value": Set::ALL.map(|s| json!({"name": s.name(), "url": format!("{}/{}", ctx.base, s.name())})),
        "serverSettings": {
            "conformance": [
                "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
                "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
                "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
            ],
        },
    })
}

/// An entity bound to the request, for `$filter` and `$orderby` paths.
struct Bound<'a> {
    ctx: &'a Ctx,
    ent: &'a Ent,
    json: std::cell::OnceCell<Value>,
}

impl<'a> Bound<'a> {
    fn new(ctx: &'a Ctx, ent: &'a Ent) -> Self {
        Self {
            ctx,
            ent,
            json: std::cell::OnceCell::new(),
        }
    }
}

impl Resolve for Bound<'_> {
    fn resolve(&self, path: &[String]) -> Vec<Value> {
        let Some((first, rest)) = path.split_first() else {
            return vec![self
                .json
                .get_or_init(|| Value::Object(self.ctx.json(self.ent)))
                .clone()];
        };
        if navs(self.ent).contains(&first.as_str()) {
            if self.ctx.exhausted() {
                return Vec::new();
            }
            let related = match self.ctx.navigate(self.ent, first) {
                Some(Nav::Many(list)) => list,
                Some(Nav::One(one)) => one.into_iter().collect(),
                None => Vec::new(),
            };
            let mut out = Vec::new();
            for e in &related {
                out.extend(Bound::new(self.ctx, e).resolve(rest));
                if out.len() >= 10_000 {
                    break;
                }
            }
            return out;
        }
        let json = self
            .json
            .get_or_init(|| Value::Object(self.ctx.json(self.ent)));
        let key = if first == "id" {
            "@iot.id"
        } else {
            first.as_str()
        };
        let mut cur = json.get(key);
        for p in rest {
            cur = cur.and_then(|v| v.get(p.as_str()));
        }
        cur.cloned().into_iter().collect()
    }
}

/// A page of a collection with its count and next link. `params` are the request's query
/// parameters (for the next link); `None` for an expanded collection, whose next link is
/// its own URL with `$top` and `$skip`.
fn collection(
    ctx: &Ctx,
    items: impl Iterator<Item = Ent>,
    o: &Options,
    url: &str,
    params: Option<&[(String, String)]>,
) -> Result<Value, Fail> {
    let page = o.page();
    // Without an order or a count, stop as soon as the page (and one more) is found.
    let enough = (o.orderby.is_empty() && !o.count).then(|| o.skip + page + 1);
    let mut matched: Vec<Ent> = Vec::new();
    for (examined, e) in items.enumerate() {
        if examined >= MAX_SCAN || !ctx.spend(1) {
            return Err(bad(format!(
                "the request would examine more than {MAX_SCAN} entities; narrow it (e.g. Datastreams(id)/Observations, or a $filter on a smaller set)"
            )));
        }
        if let Some(f) = &o.filter {
            if !filter::matches(f, &Bound::new(ctx, &e)) {
                continue;
            }
        }
        matched.push(e);
        if enough.is_some_and(|n| matched.len() >= n) {
            break;
        }
    }
    if !o.orderby.is_empty() {
        let mut keyed: Vec<(Vec<Value>, Ent)> = matched
            .into_iter()
            .map(|e| {
                let b = Bound::new(ctx, &e);
                let keys = o
                    .orderby
                    .iter()
                    .map(|(p, _)| b.resolve(p).into_iter().next().unwrap_or(Value::Null))
                    .collect();
                drop(b);
                (keys, e)
            })
            .collect();
        keyed.sort_by(|(a, _), (b, _)| {
            for (i, (_, desc)) in o.orderby.iter().enumerate() {
                let ord = filter::compare_values(&a[i], &b[i]);
                let ord = if *desc { ord.reverse() } else { ord };
                if ord.is_ne() {
                    return ord;
                }
            }
            std::cmp::Ordering::Equal
        });
        matched = keyed.into_iter().map(|(_, e)| e).collect();
    }
    let total = matched.len();
    // `$top=0` asks for the count alone: no next link, or a client would follow it for ever.
    let more = page > 0 && total > o.skip + page;
    let mut values = Vec::new();
    for e in matched.iter().skip(o.skip).take(page) {
        values.push(Value::Object(render(ctx, e, o)?));
    }
    let mut out = Map::new();
    if o.count {
        out.insert("@iot.count".into(), json!(total));
    }
    out.insert("value".into(), Value::Array(values));
    if more {
        out.insert(
            "@iot.nextLink".into(),
            json!(next_link(url, params, o.skip + page, page)),
        );
    }
    Ok(Value::Object(out))
}

fn next_link(url: &str, params: Option<&[(String, String)]>, skip: usize, top: usize) -> String {
    let mut q: Vec<String> = params
        .unwrap_or_default()
        .iter()
        .filter(|(k, _)| k != "$skip" && k != "$top")
        .map(|(k, v)| {
            format!(
                "{}={}",
                path::encode_component(k),
                path::encode_component(v)
            )
        })
        .collect();
    q.push(format!("$top={top}"));
    q.push(format!("$skip={skip}"));
    format!("{url}?{}", q.join("&"))
}

/// An entity with its expansions, its properties cut to `$select`.
fn render(ctx: &Ctx, e: &Ent, o: &Options) -> Result<Map<String, Value>, Fail> {
    if !ctx.spend(1) {
        return Err(bad("the answer would hold too many entities"));
    }
    let mut m = ctx.json(e);
    let mut expanded = Vec::new();
    for x in &o.expand {
        let nav = x.nav.as_str();
        match ctx.navigate(e, nav) {
            None => {
                return Err(bad(format!(
                    "$expand: {} has no navigation property {nav:?}; it has {}",
                    entities::set_of(e).name(),
                    navs(e).join(", ")
                )))
            }
            Some(Nav::Many(list)) => {
                let url = format!("{}/{nav}", ctx.self_link(e));
                let Value::Object(mut c) =
                    collection(ctx, list.into_iter(), &x.options, &url, None)?
                else {
                    continue;
                };
                m.insert(nav.into(), c.remove("value").unwrap_or(Value::Null));
                for (k, v) in c {
                    m.insert(format!("{nav}{k}"), v);
                }
            }
            Some(Nav::One(one)) => {
                let v = match one {
                    Some(t) => Value::Object(render(ctx, &t, &x.options)?),
                    None => Value::Null,
                };
                m.insert(nav.into(), v);
            }
        }
        expanded.push(nav);
    }
    if let Some(names) = &o.select {
        let keep = |k: &str| {
            expanded
                .iter()
                .any(|n| k == *n || k.starts_with(&format!("{n}@")))
                || names.iter().any(|n| {
                    let n = if n == "id" {
                        "@iot.id"
                    } else if n == "selfLink" {
                        "@iot.selfLink"
                    } else {
                        n.as_str()
                    };
                    k == n || k == format!("{n}@iot.navigationLink")
                })
        };
        m.retain(|k, _| keep(k));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::city::state::tests::{obs, schema};
    use aqyl_core::ingest::decode::Registry;
    use aqyl_core::ingest::descriptor::SensorType;

    /// A catalogue of `n` traffic sensors (positions along a line, areas alternating), each
    /// with `readings` readings of avgSpeed and vehicleCount.
    fn catalogue(n: usize, readings: u64) -> Catalogue {
        let ty = SensorType::from_toml(
            std::path::Path::new("traffic.toml"),
            "name = \"traffic\"\n[[fields]]\nname = \"avgSpeed\"\nunit = \"km/h\"\n[[fields]]\nname = \"vehicleCount\"\n",
        )
        .unwrap();
        let state = CityState::new(16, 1000, None, Default::default());
        let sc = schema(&["avgSpeed", "vehicleCount"]);
        for i in 0..n {
            for r in 0..readings {
                let mut o = obs(
                    "traffic",
                    &format!("s{i:02}"),
                    1000 * (r + 1),
                    &[
                        ("avgSpeed", (10 * i) as f64 + r as f64),
                        ("vehicleCount", r as f64),
                    ],
                );
                o.area = Some(if i % 2 == 0 { "even" } else { "odd" }.into());
                o.location = Some((56.0 + i as f64 * 0.01, 10.0));
                state.reading(&o, &sc);
            }
        }
        Catalogue {
            state,
            registry: aqyl_dataflow::shared(Registry::new(vec![ty])),
        }
    }

    fn get(c: &Catalogue, path: &str, query: &str) -> (u16, Value) {
        let a = c.get("http://h", path, query);
        (a.status, serde_json::from_str(&a.body).unwrap())
    }

    fn names(v: &Value) -> Vec<String> {
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn pages_follow_next_links_to_the_end_with_a_count() {
        let c = catalogue(7, 1);
        let (status, first) = get(&c, "/Things", "$top=3&$count=true&token=t");
        assert_eq!(status, 200);
        assert_eq!(first["@iot.count"], 7);
        assert_eq!(names(&first), ["s00", "s01", "s02"]);
        let mut all = names(&first);
        let mut next = first["@iot.nextLink"].as_str().unwrap().to_string();
        assert!(next.contains("token=t"), "{next}");
        loop {
            let (path, query) = next
                .strip_prefix("http://h/v1.1")
                .unwrap()
                .split_once('?')
                .unwrap();
            let (_, page) = get(&c, path, query);
            all.extend(names(&page));
            match page["@iot.nextLink"].as_str() {
                Some(n) => next = n.to_string(),
                None => break,
            }
        }
        assert_eq!(all.len(), 7);
        assert_eq!(all, (0..7).map(|i| format!("s{i:02}")).collect::<Vec<_>>());
        let (_, none) = get(&c, "/Things", "$top=0&$count=true");
        assert_eq!(
            (none["@iot.count"].clone(), none.get("@iot.nextLink")),
            (json!(7), None)
        );
        let (_, past) = get(&c, "/Things", "$skip=10");
        assert_eq!(past["value"], json!([]));
        assert!(past.get("@iot.nextLink").is_none());
    }

    #[test]
    fn order_select_expand_and_navigation() {
        let c = catalogue(4, 3);
        let (_, v) = get(
            &c,
            "/Things",
            "$orderby=properties/area%20desc,name%20desc&$select=name",
        );
        assert_eq!(names(&v), ["s03", "s01", "s02", "s00"]);
        assert_eq!(
            v["value"][0].as_object().unwrap().len(),
            1,
            "only name: {v}"
        );
        let (_, ds) = get(
            &c,
            "/Things('traffic%2Fs01')/Datastreams",
            "$filter=ObservedProperty/name%20eq%20'avgSpeed'&$expand=Observations($top=2;$select=result),Thing($select=id)",
        );
        let d = &ds["value"][0];
        assert_eq!(d["name"], "s01/avgSpeed");
        assert_eq!(d["unitOfMeasurement"]["symbol"], "km/h");
        assert_eq!(
            d["Observations"],
            json!([{"result": 12.0}, {"result": 11.0}]),
            "newest first"
        );
        assert!(d["Observations@iot.nextLink"].is_string());
        assert_eq!(d["Thing"], json!({"@iot.id": "traffic/s01"}));
        let (_, o) = get(
            &c,
            "/Observations",
            "$filter=Datastream/Thing/name%20eq%20's02'%20and%20result%20ge%2021&$orderby=result",
        );
        let results: Vec<f64> = o["value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["result"].as_f64().unwrap())
            .collect();
        assert_eq!(results, [21.0, 22.0]);
        let (_, near) = get(&c, "/Locations", "$filter=geo.distance(location,%20geography'POINT(10%2056.02)')%20lt%200.015&$expand=Things($select=name)");
        assert_eq!(near["value"].as_array().unwrap().len(), 3, "{near}");
        let (_, one) = get(
            &c,
            "/Datastreams('traffic%2Fs00%2FavgSpeed')/Observations",
            "$top=1",
        );
        let id = one["value"][0]["@iot.id"].as_str().unwrap();
        let (status, _) = get(&c, &format!("/Observations('{id}')/Datastream/Thing"), "");
        assert_eq!(status, 200);
        let (_, name) = get(&c, "/Things('traffic%2Fs00')/name", "");
        assert_eq!(name, json!({"name": "s00"}));
        let raw = c.get("http://h", "/Things('traffic%2Fs00')/name/$value", "");
        assert_eq!(raw.body, "s00");
        let (_, sensor) = get(&c, "/Sensors('traffic')/Datastreams", "$count=true&$top=0");
        assert_eq!(sensor["@iot.count"], 8);
        let (_, root) = get(&c, "", "");
        assert_eq!(root["value"].as_array().unwrap().len(), Set::ALL.len());
    }

    #[test]
    fn errors_are_the_standards_404_and_400_with_a_message() {
        let c = catalogue(1, 1);
        for (path, query, status, says) in [
            ("/Things('traffic%2Fnope')", "", 404, "no Things"),
            ("/Gadgets", "", 404, "no entity set"),
            ("/Things('traffic%2Fs00')/Nothing", "", 404, "no property"),
            ("/Things", "$top=x", 400, "whole number"),
            ("/Things", "$filter=name%20eq", 400, "$filter"),
            ("/Things", "$expand=Sensor", 400, "no navigation property"),
            ("/Things/name", "", 400, "cannot follow"),
            ("/Things('x", "", 400, "no closing quote"),
        ] {
            let (got, body) = get(&c, path, query);
            assert_eq!(got, status, "{path}?{query}: {body}");
            assert_eq!(body["code"], status);
            assert_eq!(body["type"], "error");
            assert!(
                body["message"].as_str().unwrap().contains(says),
                "{path}: {body}"
            );
        }
    }

    #[test]
    fn hostile_expands_and_navigation_chains_are_cut_off_with_a_400() {
        let c = catalogue(300, 16);
        // Four levels, eight items at each: each Thing's answer would repeat the same
        // entities thousands of times.
        let level = |nav: &str, inner: &str| format!("{nav}($expand={})", [inner; 8].join(","));
        let l3 = level("Datastreams", "Thing");
        let l2 = level("Thing", &l3);
        let l1 = level("Datastreams", &l2);
        let many = [l1.as_str(); 8].join(",");
        let (status, body) = get(&c, "/Things", &format!("$top=1000&$expand={many}"));
        assert_eq!(status, 400, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("more than"),
            "{body}"
        );
        let chain = "Datastreams/Thing/".repeat(12) + "nothing";
        let (status, body) = get(&c, "/Sensors", &format!("$filter={chain}%20eq%201"));
        assert_eq!(status, 400, "{body}");
        // An ordinary request is far from the limit.
        let (status, _) = get(
            &c,
            "/Things",
            "$expand=Datastreams($expand=Observations($top=3))",
        );
        assert_eq!(status, 200);
    }

    #[test]
    fn the_catalogue_follows_descriptor_reloads() {
        let c = catalogue(2, 1);
        let count =
            |c: &Catalogue, set: &str| get(c, set, "$count=true&$top=0").1["@iot.count"].clone();
        assert_eq!(count(&c, "/Datastreams"), 4);
        // A reload adds a field: every sensor gets its Datastream, empty until it reports.
        let ty = SensorType::from_toml(
            std::path::Path::new("traffic.toml"),
            "name = \"traffic\"\n[[fields]]\nname = \"avgSpeed\"\n[[fields]]\nname = \"vehicleCount\"\n[[fields]]\nname = \"occupancy\"\nunit = \"%\"\n",
        )
        .unwrap();
        c.registry.store(Arc::new(Registry::new(vec![ty])));
        assert_eq!(count(&c, "/Datastreams"), 6);
        assert_eq!(count(&c, "/ObservedProperties"), 3);
        let (_, op) = get(&c, "/ObservedProperties('traffic%2Foccupancy')", "");
        assert_eq!(op["properties"]["unit"], "%");
        // A reload that removes the type hides its sensors.
        c.registry.store(Arc::new(Registry::new(Vec::new())));
        assert_eq!(count(&c, "/Things"), 0);
        assert_eq!(get(&c, "/Things('traffic%2Fs00')", "").0, 404);
    }

    #[test]
    fn state_answers_select_and_page() {
        let c = catalogue(5, 1);
        let v: Value =
            serde_json::from_str(&state_answer(&c.state, "area=odd&limit=1").body).unwrap();
        assert_eq!(v["total"], 2);
        assert_eq!(v["sensors"][0]["sensor_id"], "s01");
        assert_eq!(state_answer(&c.state, "limit=x").status, 400);
        assert_eq!(state_answer(&c.state, "bbox=9,55,11,56.015").status, 200);
        let v: Value =
            serde_json::from_str(&state_answer(&c.state, "bbox=9,55,11,56.015").body).unwrap();
        assert_eq!(v["total"], 2, "s00 and s01 lie in the box");
        let ld = c.jsonld_answer("http://h", "traffic/s00.jsonld");
        assert_eq!(ld.status, 200);
        assert_eq!(ld.content_type, "application/ld+json");
        assert_eq!(c.jsonld_answer("http://h", "traffic/zz.jsonld").status, 404);
        let negotiated = c
            .thing_jsonld("http://h", "/Things('traffic%2Fs00')")
            .unwrap();
        assert_eq!(negotiated.body, ld.body);
        assert!(c.thing_jsonld("http://h", "/Things").is_none());
    }
}

#[cfg(test)]
mod scale {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Not a benchmark: prints how long typical catalogue requests take over 10,000 sensors
    /// with full rings (`cargo test -p aqyl --lib scale -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn ten_thousand_sensors() {
        use crate::city::state::tests::{obs, schema};
        let ty = aqyl_core::ingest::descriptor::SensorType::from_toml(
            std::path::Path::new("traffic.toml"),
            "name = \"traffic\"\n[[fields]]\nname = \"avgSpeed\"\n[[fields]]\nname = \"vehicleCount\"\n[[fields]]\nname = \"avgMeasuredTime\"\n[[fields]]\nname = \"medianMeasuredTime\"\n",
        )
        .unwrap();
        let state = CityState::new(16, 100_000, None, Default::default());
        let sc = schema(&[
            "avgSpeed",
            "vehicleCount",
            "avgMeasuredTime",
            "medianMeasuredTime",
        ]);
        let t = std::time::Instant::now();
        for i in 0..10_000 {
            for r in 0..16u64 {
                let o = obs(
                    "traffic",
                    &format!("{i}"),
                    1000 * (r + 1),
                    &[
                        ("avgSpeed", r as f64),
                        ("vehicleCount", 1.0),
                        ("avgMeasuredTime", 2.0),
                        ("medianMeasuredTime", 3.0),
                    ],
                );
                state.reading(&o, &sc);
            }
        }
        println!("160,000 readings taken in {:?}", t.elapsed());
        let c = Catalogue {
            state,
            registry: aqyl_dataflow::shared(aqyl_core::ingest::decode::Registry::new(vec![ty])),
        };
        for (path, query) in [
            ("/Things", "$count=true&$top=100"),
            ("/Datastreams", "$filter=ObservedProperty/name%20eq%20'avgSpeed'&$count=true"),
            ("/Things", "$filter=geo.intersects(Locations/location,geography'POLYGON((10.1%2056.1,10.3%2056.1,10.3%2056.2,10.1%2056.2,10.1%2056.1))')&$count=true"),
            ("/Datastreams('traffic%2F5000%2FavgSpeed')/Observations", ""),
        ] {
            let t = std::time::Instant::now();
            let a = c.get("http://h", path, query);
            println!("{path}?{query}: {} in {:?} ({} bytes)", a.status, t.elapsed(), a.body.len());
        }
        let t = std::time::Instant::now();
        let v = state_answer(&c.state, "");
        println!("/api/state: {} bytes in {:?}", v.body.len(), t.elapsed());
    }
}
