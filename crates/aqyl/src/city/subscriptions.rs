//! Contextual subscriptions managed over HTTP: the file subscriptions (read at start, changed
//! only by editing their files) and those created with `PUT /api/subscriptions/<name>`, kept
//! in `subscriptions.json` in the state directory so that they survive a restart. Every
//! change swaps the list the MQTT publisher selects with ([`aqyl_core::subscriptions::Shared`]),
//! so an HTTP subscription is delivered exactly as a file one, by the same match.

use aqyl_core::subscriptions::{self, Origin, Shared, Subscription};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Subscriptions that may be created over HTTP (each is judged against every incident).
pub const MAX_HTTP_SUBSCRIPTIONS: usize = 1000;
/// The file HTTP subscriptions are kept in, inside the state directory.
pub const FILE_NAME: &str = "subscriptions.json";

/// Why a change was refused, as an HTTP status and a sentence.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    /// 400, 404, 409, 500.
    pub status: u16,
    /// What is wrong and what to do.
    pub message: String,
}

fn refuse(status: u16, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

/// Whether a `PUT` created a subscription or replaced one.
#[derive(Debug, PartialEq)]
pub enum Put {
    /// A new name.
    Created,
    /// An HTTP subscription of that name was replaced.
    Replaced,
}

/// The subscriptions in force and where the HTTP ones are kept.
#[derive(Debug)]
pub struct Subscriptions {
    shared: Shared,
    files: Vec<Subscription>,
    http: Mutex<Vec<Subscription>>,
    store: PathBuf,
    /// Why the kept subscriptions could not be read, if they could not: writes are then
    /// refused, so that they never replace a file that could not be read.
    unreadable: Option<String>,
}

impl Subscriptions {
    /// The file subscriptions and the HTTP ones kept in `state_dir` (an HTTP one whose name a
    /// file now uses is left out, with a warning: the file wins). A kept file that is not
    /// what Aqyl wrote is an error; one that cannot be read (a state directory that is not
    /// usable, which the rest of the service reports in its own way) is logged, and the
    /// service goes on with the file subscriptions and refuses writes.
    pub fn open(files: Vec<Subscription>, state_dir: &Path) -> anyhow::Result<Arc<Self>> {
        let store = state_dir.join(FILE_NAME);
        let (mut http, unreadable) = match read_store(&store) {
            Ok(list) => (list, None),
            Err(Unreadable::Io(why)) => {
                tracing::error!(file = %store.display(), error = %why, "Cannot read the subscriptions created over HTTP; going on without them, and refusing changes until the state directory is usable.");
                (Vec::new(), Some(why))
            }
            Err(Unreadable::Damaged(e)) => return Err(e),
        };
        http.retain(|h| {
            let clash = files.iter().any(|f| f.name == h.name);
            if clash {
                tracing::warn!(subscription = %h.name, file = %store.display(), "A subscription file now defines this name; the one created over HTTP is left out (delete it over HTTP or rename one of them).");
            }
            !clash
        });
        let this = Subscriptions {
            shared: Arc::new(arc_swap::ArcSwap::from_pointee(Vec::new())),
            files,
            http: Mutex::new(http),
            store,
            unreadable,
        };
        this.publish(&this.lock());
        Ok(Arc::new(this))
    }

    /// The list the publisher selects with.
    pub fn shared(&self) -> Shared {
        self.shared.clone()
    }

    /// Every subscription, file ones first.
    pub fn list(&self) -> Arc<Vec<Subscription>> {
        self.shared.load_full()
    }

    /// One subscription by name.
    pub fn get(&self, name: &str) -> Option<Subscription> {
        self.shared.load().iter().find(|s| s.name == name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscription>> {
        self.http.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, http: &[Subscription]) {
        let all: Vec<Subscription> = self.files.iter().chain(http).cloned().collect();
        self.shared.store(Arc::new(all));
    }

    fn refuse_if_unreadable(&self) -> Result<(), Refusal> {
        match &self.unreadable {
            None => Ok(()),
            Some(why) => Err(refuse(
                500,
                format!("the subscriptions created over HTTP could not be read at start ({why}); make the state directory usable and restart"),
            )),
        }
    }

    fn file_one(&self, name: &str) -> Option<Refusal> {
        self.files.iter().find(|f| f.name == name).map(|f| {
            let at = match &f.origin {
                Origin::File { path, line } => format!("{path}:{line}"),
                Origin::Http => "a file".into(),
            };
            refuse(
                409,
                format!("subscription {name:?} is defined in {at}; edit that file to change it (and restart)"),
            )
        })
    }

    /// Creates or replaces the HTTP subscription `name` from a JSON `body` (checked as a file's
    /// `[[subscription]]` is), and keeps the list on disk before it takes effect.
    pub fn put(&self, name: &str, body: &[u8]) -> Result<(Put, Subscription), Refusal> {
        if let Some(problem) = subscriptions::name_problem(name) {
            return Err(refuse(400, problem));
        }
        if let Some(r) = self.file_one(name) {
            return Err(r);
        }
        let sub = subscriptions::from_json(name, body).map_err(|m| refuse(400, m))?;
        self.refuse_if_unreadable()?;
        let mut http = self.lock();
        let mut next = http.clone();
        let full = next.len() >= MAX_HTTP_SUBSCRIPTIONS;
        let put = match next.iter_mut().find(|s| s.name == name) {
            Some(old) => {
                *old = sub.clone();
                Put::Replaced
            }
            None if full => {
                return Err(refuse(
                    409,
                    format!("there are already {MAX_HTTP_SUBSCRIPTIONS} subscriptions created over HTTP; delete one first"),
                ))
            }
            None => {
                next.push(sub.clone());
                Put::Created
            }
        };
        write_store(&self.store, &next).map_err(|m| refuse(500, m))?;
        *http = next;
        self.publish(&http);
        Ok((put, sub))
    }

    /// Deletes the HTTP subscription `name`.
    pub fn delete(&self, name: &str) -> Result<(), Refusal> {
        if let Some(r) = self.file_one(name) {
            return Err(r);
        }
        self.refuse_if_unreadable()?;
        let mut http = self.lock();
        if !http.iter().any(|s| s.name == name) {
            return Err(refuse(404, format!("no subscription {name:?}")));
        }
        let next: Vec<Subscription> = http.iter().filter(|s| s.name != name).cloned().collect();
        write_store(&self.store, &next).map_err(|m| refuse(500, m))?;
        *http = next;
        self.publish(&http);
        Ok(())
    }
}

/// Why the kept subscriptions were not read.
enum Unreadable {
    /// The file could not be read.
    Io(String),
    /// It was read and is not what Aqyl writes.
    Damaged(anyhow::Error),
}

/// The kept HTTP subscriptions (none when the file is not there yet).
fn read_store(path: &Path) -> Result<Vec<Subscription>, Unreadable> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Unreadable::Io(e.to_string())),
    };
    let bad = |why: String| {
        Unreadable::Damaged(anyhow::anyhow!(
            "{}: {why}; this file holds the subscriptions created over HTTP: repair it, or move it aside to start without them",
            path.display()
        ))
    };
    let doc: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let list = doc
        .get("subscriptions")
        .and_then(|l| l.as_array())
        .ok_or_else(|| bad("no \"subscriptions\" list".into()))?;
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let mut item = item.clone();
            if let Some(o) = item.as_object_mut() {
                o.remove("origin");
            }
            let name = item.get("name").and_then(|n| n.as_str()).unwrap_or("");
            subscriptions::from_json(name, item.to_string().as_bytes())
                .map_err(|e| bad(format!("subscription {i}: {e}")))
        })
        .collect()
}

/// Writes the list atomically: a temporary file beside it, synced, renamed over it.
fn write_store(path: &Path, list: &[Subscription]) -> Result<(), String> {
    let fail = |what: &str, e: std::io::Error| {
        format!(
            "cannot keep the subscriptions in {}: {what}: {e}; check that the state directory is writable",
            path.display()
        )
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| fail("creating its directory", e))?;
    let doc = serde_json::json!({ "format": 1, "subscriptions": list });
    let tmp = path.with_extension("json.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| fail("writing", e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file_sub() -> Vec<Subscription> {
        subscriptions::parse(
            Path::new("config/subscriptions/x.toml"),
            "[[subscription]]\nname = \"from-file\"\n",
        )
        .unwrap()
    }

    #[test]
    fn http_subscriptions_are_kept_across_a_restart_and_file_ones_are_not_theirs_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let subs = Subscriptions::open(file_sub(), dir.path()).unwrap();
        let (put, _) = subs.put("ring", br#"{"levels":["critical"]}"#).unwrap();
        assert_eq!(put, Put::Created);
        let (put, _) = subs.put("ring", br#"{"levels":["warning"]}"#).unwrap();
        assert_eq!(put, Put::Replaced);
        subs.put("two", b"{}").unwrap();
        assert_eq!(subs.list().len(), 3);
        let file = subs.put("from-file", b"{}").unwrap_err();
        assert_eq!(file.status, 409);
        assert!(file.message.contains("x.toml:1"), "{}", file.message);
        assert_eq!(subs.delete("from-file").unwrap_err().status, 409);
        assert_eq!(subs.delete("nothing").unwrap_err().status, 404);
        let bad = subs.put("ring", br#"{"levls":[]}"#).unwrap_err();
        assert_eq!(bad.status, 400);
        assert!(bad.message.contains("levls"), "{}", bad.message);
        subs.delete("two").unwrap();

        let again = Subscriptions::open(file_sub(), dir.path()).unwrap();
        let names: Vec<String> = again.list().iter().map(|s| s.name.clone()).collect();
        assert_eq!(names, ["from-file", "ring"]);
        assert_eq!(again.get("ring").unwrap().levels, ["warning"]);
        assert_eq!(again.get("ring").unwrap().origin, Origin::Http);
        assert!(!dir.path().join("subscriptions.json.tmp").exists());
    }

    #[test]
    fn an_unusable_state_directory_leaves_the_file_subscriptions_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-directory");
        std::fs::write(&file, "").unwrap();
        let subs = Subscriptions::open(file_sub(), &file).unwrap();
        assert_eq!(subs.list().len(), 1);
        let refused = subs.put("mine", b"{}").unwrap_err();
        assert_eq!(refused.status, 500);
        assert!(
            refused.message.contains("state directory"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn a_damaged_store_is_refused_with_the_file_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE_NAME),
            "{\"subscriptions\":[{\"name\":\"a/b\"}]}",
        )
        .unwrap();
        let e = Subscriptions::open(Vec::new(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("subscriptions.json") && e.contains("topic segment"),
            "{e}"
        );
        assert!(e.contains("move it aside"), "{e}");
    }
}
