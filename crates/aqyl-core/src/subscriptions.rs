//! Contextual subscriptions: named selections of incidents (by event type, level, sensor
//! type, area, bounding box or route) that the service delivers on
//! `<prefix>/subscriptions/<name>/<event_type>/<subject>`, so an operator or a city service
//! subscribes to what concerns it instead of filtering every incident itself.
//!
//! A subscription file (`config/subscriptions/*.toml`) holds `[[subscription]]` tables:
//!
//! ```toml
//! [[subscription]]
//! name = "ring-road"                     # topic segment: letters, digits, '-', '_'
//! event_types = ["congestion"]           # any of these (all when absent)
//! levels = ["warning", "critical"]       # any of these
//! sensor_types = ["traffic"]
//! areas = ["grid-11-03"]                 # the incident's area (or an area incident's subject)
//! bbox = [10.10, 56.10, 10.25, 56.20]    # west, south, east, north (GeoJSON order)
//! route = ["158324", "158355"]           # the incident's sensor is one of these segments
//! ```
//!
//! Every criterion given must hold; within one, any listed value does. Position criteria
//! (`bbox`, `route`) use the sensor registries: an incident of a sensor matches `bbox` when
//! the sensor lies inside, and an area incident when any registered sensor of the area does;
//! an area incident matches `route` when the area holds a segment of the route.

use crate::error::{ConfigError, ConfigErrors};
use crate::ingest::decode::Registry;
use crate::Event;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// The subscriptions in force, shared between the publisher that delivers them and whatever
/// changes them (the HTTP endpoint): swapped whole, read without a lock.
pub type Shared = Arc<arc_swap::ArcSwap<Vec<Subscription>>>;

/// Where a subscription came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// A `[[subscription]]` table of a file: edit the file to change it.
    File {
        /// The file.
        path: String,
        /// The line of its `[[subscription]]`.
        line: usize,
    },
    /// Created over HTTP (`PUT /api/subscriptions/<name>`), kept in the state directory.
    Http,
}

/// One named selection of incidents.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Subscription {
    /// Its name, a topic segment.
    pub name: String,
    /// Where it came from.
    pub origin: Origin,
    /// Event types (any); empty: all.
    pub event_types: Vec<String>,
    /// Levels (any); empty: all.
    pub levels: Vec<String>,
    /// Sensor types (any); empty: all.
    pub sensor_types: Vec<String>,
    /// Areas (any); empty: all.
    pub areas: Vec<String>,
    /// West, south, east, north (longitude and latitude, GeoJSON's `bbox` order, as
    /// `/api/state?bbox=` takes it).
    pub bbox: Option<[f64; 4]>,
    /// Sensor ids (any); empty: all.
    pub route: Vec<String>,
}

/// A (sensor type, name) key: a sensor id or an area.
type Key = (String, String);

/// Where the registered sensors are, for the position criteria.
#[derive(Debug, Default)]
pub struct Places {
    /// (sensor type, sensor id) → (lat, lon, area).
    sensors: HashMap<Key, (f64, f64, Option<String>)>,
    /// (sensor type, area) → its sensors' positions and ids.
    areas: HashMap<Key, Vec<(f64, f64, String)>>,
}

impl Places {
    /// The positions of every sensor of `registry`'s sensor registries.
    pub fn of(registry: &Registry) -> Self {
        let mut places = Places::default();
        for ty in registry.types() {
            let Some(reg) = &ty.registry else { continue };
            for (id, info) in reg.iter() {
                let area = info.area.as_deref().map(str::to_string);
                if let Some(a) = &area {
                    places
                        .areas
                        .entry((ty.name.to_string(), a.clone()))
                        .or_default()
                        .push((info.lat, info.lon, id.to_string()));
                }
                places.sensors.insert(
                    (ty.name.to_string(), id.to_string()),
                    (info.lat, info.lon, area),
                );
            }
        }
        places
    }
}

/// The subscriptions with the registry positions they are judged against, renewed when the
/// registry is (a descriptor reload).
#[derive(Debug, Default)]
pub struct Selector {
    shared: Shared,
    /// The list in force for the incident being judged.
    subscriptions: Arc<Vec<Subscription>>,
    places: Places,
    /// The registry `places` were taken from (its address).
    from: usize,
}

impl Selector {
    /// A selector of a fixed list of `subscriptions`.
    pub fn new(subscriptions: Vec<Subscription>) -> Self {
        Selector::of(Arc::new(arc_swap::ArcSwap::from_pointee(subscriptions)))
    }

    /// A selector of whatever list `shared` holds when each incident is judged.
    pub fn of(shared: Shared) -> Self {
        Selector {
            shared,
            ..Selector::default()
        }
    }

    /// The subscriptions that select `e`, with the positions of `registry`.
    pub fn select<'a>(
        &'a mut self,
        e: &'a Event,
        registry: &std::sync::Arc<Registry>,
    ) -> impl Iterator<Item = &'a Subscription> + 'a {
        self.subscriptions = self.shared.load_full();
        let from = std::sync::Arc::as_ptr(registry) as usize;
        if from != self.from && !self.subscriptions.is_empty() {
            self.places = Places::of(registry);
            self.from = from;
        }
        let places = &self.places;
        self.subscriptions
            .iter()
            .filter(move |s| s.matches(e, places))
    }
}

impl Subscription {
    /// What it selects, for a human: `congestion, traffic_jam; in grid-11-03`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let list = |l: &[String]| l.join(", ");
        if !self.event_types.is_empty() {
            parts.push(list(&self.event_types));
        }
        if !self.levels.is_empty() {
            parts.push(format!("level {}", list(&self.levels)));
        }
        if !self.sensor_types.is_empty() {
            parts.push(format!("of {}", list(&self.sensor_types)));
        }
        if !self.areas.is_empty() {
            parts.push(format!("in {}", list(&self.areas)));
        }
        if let Some([w, s, e, n]) = self.bbox {
            parts.push(format!("within [{w}, {s}, {e}, {n}]"));
        }
        if !self.route.is_empty() {
            parts.push(format!("on a route of {} segments", self.route.len()));
        }
        if parts.is_empty() {
            "every incident".into()
        } else {
            parts.join("; ")
        }
    }

    /// What in it can never match with these rules and registries: event types no rule
    /// raises, sensor types, areas and route segments no registry knows. (Areas can also come
    /// from topics, so these are warnings, not errors.)
    pub fn unknowns(&self, event_types: &[&str], registry: &Registry) -> Vec<String> {
        let places = Places::of(registry);
        let mut out = Vec::new();
        for t in &self.event_types {
            if !event_types.contains(&t.as_str()) {
                out.push(format!("no rule raises event type {t:?}"));
            }
        }
        for t in &self.sensor_types {
            if registry.get(t).is_none() {
                out.push(format!("no sensor type {t:?}"));
            }
        }
        for a in &self.areas {
            if !places.areas.keys().any(|(_, area)| area == a) {
                out.push(format!("no registered sensor is in area {a:?}"));
            }
        }
        for id in &self.route {
            if !places.sensors.keys().any(|(_, s)| s == id) {
                out.push(format!("route segment {id:?} is in no sensor registry"));
            }
        }
        out
    }

    /// Whether `e` is one of the incidents this subscription selects.
    pub fn matches(&self, e: &Event, places: &Places) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        if !(any(&self.event_types, &e.event_type)
            && any(&self.levels, &e.level)
            && any(&self.sensor_types, &e.sensor_type))
        {
            return false;
        }
        let ty = e.sensor_type.to_string();
        let sensor = places.sensors.get(&(ty.clone(), e.subject.clone()));
        // An incident about an area has the area as its subject (and no sensor of that id).
        let area_members = match sensor {
            None => places.areas.get(&(ty, e.subject.clone())),
            Some(_) => None,
        };
        let area = e
            .area
            .clone()
            .or_else(|| sensor.and_then(|s| s.2.clone()))
            .or_else(|| area_members.map(|_| e.subject.clone()));
        if !self.areas.is_empty() && !area.is_some_and(|a| self.areas.contains(&a)) {
            return false;
        }
        if let Some([west, south, east, north]) = self.bbox {
            let inside =
                |lat: f64, lon: f64| (south..=north).contains(&lat) && (west..=east).contains(&lon);
            let hit = match (sensor, area_members) {
                (Some(s), _) => inside(s.0, s.1),
                (None, Some(members)) => members.iter().any(|m| inside(m.0, m.1)),
                (None, None) => false,
            };
            if !hit {
                return false;
            }
        }
        if !self.route.is_empty() {
            let on_route = match area_members {
                Some(members) => members.iter().any(|m| self.route.contains(&m.2)),
                None => self.route.contains(&e.subject),
            };
            if !on_route {
                return false;
            }
        }
        true
    }

    /// The topic of `e` for this subscription:
    /// `<prefix>/subscriptions/<name>/<event_type>/<subject>`.
    pub fn topic(&self, prefix: &str, e: &Event) -> String {
        format!(
            "{prefix}/subscriptions/{}/{}/{}",
            self.name,
            e.event_type,
            crate::output::topic_level(&e.subject)
        )
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionFile {
    #[serde(default)]
    subscription: Vec<toml::Spanned<Entry>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default)]
    levels: Vec<String>,
    #[serde(default)]
    sensor_types: Vec<String>,
    #[serde(default)]
    areas: Vec<String>,
    bbox: Option<Vec<f64>>,
    #[serde(default)]
    route: Vec<String>,
}

/// A name that is one MQTT topic segment and safe in a URL.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A subscription name that is not a topic segment, said so that a user can fix it.
pub fn name_problem(name: &str) -> Option<String> {
    (!valid_name(name)).then(|| {
        format!(
            "subscription name {name:?}: use 1 to 64 letters, digits, '-' or '_' (it is a topic segment)"
        )
    })
}

/// Checks one entry (from a file or from HTTP): the same rules whatever its origin.
fn build(e: Entry, origin: Origin) -> Result<Subscription, String> {
    if let Some(problem) = name_problem(&e.name) {
        return Err(problem);
    }
    let bbox = match e.bbox.as_deref() {
        None => None,
        Some(&[w, s, east, n])
            if (-90.0..=90.0).contains(&s)
                && (-90.0..=90.0).contains(&n)
                && (-180.0..=180.0).contains(&w)
                && (-180.0..=180.0).contains(&east)
                && s <= n
                && w <= east =>
        {
            Some([w, s, east, n])
        }
        Some(other) => {
            return Err(format!(
                "subscription {:?}: bbox {other:?} must be [west, south, east, north] in degrees (GeoJSON order), west <= east and south <= north",
                e.name
            ))
        }
    };
    Ok(Subscription {
        name: e.name,
        origin,
        event_types: e.event_types,
        levels: e.levels,
        sensor_types: e.sensor_types,
        areas: e.areas,
        bbox,
        route: e.route,
    })
}

/// Parses a subscription sent over HTTP as a JSON object with the keys of a file's
/// `[[subscription]]` table; `name` comes from the URL (the body may repeat it). The error
/// names the key that is wrong.
pub fn from_json(name: &str, body: &[u8]) -> Result<Subscription, String> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not JSON: {e}; send an object such as {{\"event_types\": [\"congestion\"]}}"))?;
    let Some(object) = value.as_object_mut() else {
        return Err("the body must be a JSON object with the keys of a [[subscription]] table (event_types, levels, sensor_types, areas, bbox, route)".into());
    };
    match object.get("name") {
        None => {
            object.insert("name".into(), name.into());
        }
        Some(given) if given.as_str() == Some(name) => {}
        Some(given) => {
            return Err(format!(
                "name: the body names {given} but the URL {name:?}; leave name out of the body or make them equal"
            ))
        }
    }
    let entry: Entry = serde_json::from_value(value.clone()).map_err(|e| {
        // serde names an unknown key but not the key whose value is wrong: find it.
        let wrong = value.as_object().and_then(|o| {
            o.iter().find(|(k, v)| {
                let alone = serde_json::json!({ "name": name, k.as_str(): v });
                serde_json::from_value::<Entry>(alone).is_err()
            })
        });
        match wrong {
            Some((key, _)) if !e.to_string().contains(&format!("`{key}`")) => format!("{key}: {e}"),
            _ => e.to_string(),
        }
    })?;
    build(entry, Origin::Http)
}

/// Parses one subscription file; `path` names it in errors (`file:line`).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Subscription>, ConfigErrors> {
    let file: SubscriptionFile = toml::from_str(text).map_err(|e| {
        ConfigError::at(
            path,
            text,
            e.span().map(|s| s.start),
            e.message().to_string(),
        )
    })?;
    let (mut subs, mut errors) = (Vec::new(), Vec::new());
    for spanned in file.subscription {
        let at = spanned.span().start;
        let origin = Origin::File {
            path: path.display().to_string(),
            line: text[..at.min(text.len())].matches('\n').count() + 1,
        };
        match build(spanned.into_inner(), origin) {
            Ok(s) => subs.push(s),
            Err(msg) => errors.push(ConfigError::at(path, text, Some(at), msg)),
        }
    }
    if errors.is_empty() {
        Ok(subs)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Loads every `*.toml` file of `dir` (a missing directory means no subscriptions); names
/// must be unique across files.
pub fn load_dir(dir: &Path) -> Result<Vec<Subscription>, ConfigErrors> {
    let (mut subs, mut errors) = (Vec::<Subscription>::new(), Vec::new());
    let mut names = HashSet::new();
    for (path, text) in crate::error::toml_files(dir) {
        let parsed = text
            .map_err(|e| ConfigErrors(vec![e]))
            .and_then(|text| parse(&path, &text));
        match parsed {
            Ok(list) => {
                for s in list {
                    if !names.insert(s.name.clone()) {
                        errors.push(ConfigError::file(
                            &path,
                            format!("subscription {:?} is defined twice; names are topics and must be unique", s.name),
                        ));
                    }
                    subs.push(s);
                }
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(subs)
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventState;
    use std::sync::Arc;

    fn places() -> Places {
        let mut p = Places::default();
        for (id, lat, lon, area) in [
            ("a1", 56.10, 10.10, "north"),
            ("a2", 56.12, 10.12, "north"),
            ("b1", 56.30, 10.30, "south"),
        ] {
            p.sensors
                .insert(("traffic".into(), id.into()), (lat, lon, Some(area.into())));
            p.areas
                .entry(("traffic".into(), area.into()))
                .or_default()
                .push((lat, lon, id.into()));
        }
        p
    }

    fn event(event_type: &str, subject: &str, level: &str) -> Event {
        Event {
            extra: Vec::new(),
            id: "x".into(),
            event_type: event_type.into(),
            subject: subject.into(),
            sensor_type: Arc::from("traffic"),
            area: None,
            state: EventState::Start,
            level: level.into(),
            started_at: 0,
            time: 0,
            rule: "r".into(),
            message: String::new(),
            values: Vec::new(),
        }
    }

    fn sub(text: &str) -> Subscription {
        let text = format!("[[subscription]]\nname = \"s\"\n{text}");
        parse(Path::new("s.toml"), &text).unwrap().remove(0)
    }

    #[test]
    fn each_criterion_narrows_and_a_list_widens() {
        let p = places();
        let all = sub("");
        assert!(all.matches(&event("congestion", "b1", "info"), &p));
        let types = sub("event_types = [\"congestion\", \"outage\"]");
        assert!(types.matches(&event("outage", "a1", "info"), &p));
        assert!(!types.matches(&event("jam", "a1", "info"), &p));
        let level = sub("levels = [\"critical\"]\nevent_types = [\"congestion\"]");
        assert!(level.matches(&event("congestion", "a1", "critical"), &p));
        assert!(!level.matches(&event("congestion", "a1", "warning"), &p));
        assert!(!level.matches(&event("outage", "a1", "critical"), &p));
    }

    #[test]
    fn areas_bounding_boxes_and_routes_use_the_registry() {
        let p = places();
        let north = sub("areas = [\"north\"]");
        assert!(north.matches(&event("congestion", "a2", "warning"), &p));
        assert!(!north.matches(&event("congestion", "b1", "warning"), &p));
        // An area incident: the area is its subject.
        assert!(north.matches(&event("area_congestion", "north", "warning"), &p));
        let bbox = sub("bbox = [10.09, 56.09, 10.11, 56.11]");
        assert!(bbox.matches(&event("congestion", "a1", "warning"), &p));
        assert!(!bbox.matches(&event("congestion", "a2", "warning"), &p));
        assert!(bbox.matches(&event("area_congestion", "north", "warning"), &p));
        assert!(!bbox.matches(&event("area_congestion", "south", "warning"), &p));
        assert!(!bbox.matches(&event("congestion", "unregistered", "warning"), &p));
        let route = sub("route = [\"a2\", \"b1\"]");
        assert!(route.matches(&event("congestion", "b1", "warning"), &p));
        assert!(!route.matches(&event("congestion", "a1", "warning"), &p));
        assert!(route.matches(&event("area_congestion", "north", "warning"), &p));
    }

    #[test]
    fn the_topic_is_the_lifecycle_topic_under_the_subscription() {
        let s = sub("");
        let e = event("congestion", "a1", "warning");
        assert_eq!(s.topic("aqyl", &e), "aqyl/subscriptions/s/congestion/a1");
    }

    #[test]
    fn mistakes_are_refused_with_the_line() {
        let err = |text: &str| parse(Path::new("s.toml"), text).unwrap_err().to_string();
        let name = err("[[subscription]]\nname = \"a/b\"\n");
        assert!(
            name.contains("s.toml:1") && name.contains("topic segment"),
            "{name}"
        );
        let bbox = err("\n[[subscription]]\nname = \"x\"\nbbox = [10.1, 56.2, 10.2, 56.1]\n");
        assert!(
            bbox.contains("s.toml:2") && bbox.contains("south <= north"),
            "{bbox}"
        );
        let unknown = err("[[subscription]]\nname = \"x\"\nlevel = \"critical\"\n");
        assert!(
            unknown.contains("s.toml:3") && unknown.contains("level"),
            "{unknown}"
        );
    }

    #[test]
    fn http_bodies_are_checked_like_files_and_errors_name_the_key() {
        let s = from_json(
            "ring",
            br#"{"event_types":["congestion"],"bbox":[10.1,56.1,10.2,56.2]}"#,
        )
        .unwrap();
        assert_eq!(s.name, "ring");
        assert_eq!(s.origin, Origin::Http);
        assert_eq!(s.bbox, Some([10.1, 56.1, 10.2, 56.2]));
        let err = |name: &str, body: &str| from_json(name, body.as_bytes()).unwrap_err();
        let unknown = err("ring", r#"{"level":"critical"}"#);
        assert!(unknown.contains("unknown field `level`"), "{unknown}");
        let wrong = err("ring", r#"{"route":"158324"}"#);
        assert!(
            wrong.starts_with("route: ") && wrong.contains("expected a sequence"),
            "{wrong}"
        );
        let bbox = err("ring", r#"{"bbox":[10.2,56.1,10.1,56.2]}"#);
        assert!(
            bbox.contains("bbox") && bbox.contains("west <= east"),
            "{bbox}"
        );
        assert!(err("a/b", "{}").contains("topic segment"));
        assert!(err("ring", r#"{"name":"other"}"#).starts_with("name:"));
        assert!(err("ring", "[1]").contains("JSON object"));
        assert!(err("ring", "{").contains("not JSON"));
        // The same subscription from a file selects the same incidents.
        let file = sub("event_types = [\"congestion\"]\nbbox = [10.1, 56.1, 10.2, 56.2]");
        assert_eq!(file.bbox, s.bbox);
        assert!(matches!(file.origin, Origin::File { line: 1, .. }));
    }

    #[test]
    fn a_selector_follows_the_shared_list() {
        let shared: Shared = Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new()));
        let mut selector = Selector::of(shared.clone());
        let registry = Arc::new(Registry::new(Vec::new()));
        let e = event("congestion", "a1", "warning");
        assert_eq!(selector.select(&e, &registry).count(), 0);
        shared.store(Arc::new(vec![sub("")]));
        let names: Vec<String> = selector
            .select(&e, &registry)
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(names, ["s"]);
    }

    #[test]
    fn names_are_unique_across_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.toml", "b.toml"] {
            std::fs::write(dir.path().join(f), "[[subscription]]\nname = \"same\"\n").unwrap();
        }
        let e = load_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("b.toml") && e.contains("twice"), "{e}");
        assert!(load_dir(&dir.path().join("missing")).unwrap().is_empty());
    }
}
