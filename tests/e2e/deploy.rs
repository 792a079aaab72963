//! The deploy files (`deploy/docker`, `deploy/compose`, `deploy/kubernetes`), checked without
//! a container engine or a cluster, as neither runs on the build machine: every YAML file
//! parses, every file they name exists, every `AQYL_*` variable they set is one Aqyl reads,
//! the cluster's process indices, hosts and ports agree with each other and with the replicas,
//! the probes ask the HTTP port Aqyl listens on with the deployment's environment, and the
//! configuration each deployment mounts passes `aqyl check` with that environment.

use super::{repo, AQYL};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

type Env = BTreeMap<String, String>;

// ---- YAML ----

/// Every document of a YAML file; one that does not parse fails with the file's name.
fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn load_one(path: &Path) -> Yaml {
    let mut docs = load(path);
    assert_eq!(docs.len(), 1, "{}: one document expected", path.display());
    docs.remove(0)
}

/// A scalar as text (YAML reads `9464` as a number and `"0"` as a string).
fn text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn must(y: &Yaml, what: &str) -> String {
    text(y).unwrap_or_else(|| panic!("{what}: expected a value, found {y:?}"))
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

fn entries(y: &Yaml) -> Vec<(String, &Yaml)> {
    y.as_hash()
        .map(|h| h.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect())
        .unwrap_or_default()
}

fn files_with(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_with(&path, exts, out);
        } else if exts.contains(&path.extension().and_then(|e| e.to_str()).unwrap_or("")) {
            out.push(path);
        }
    }
}

// ---- Aqyl ----

/// The variables Aqyl reads: the README's table of them.
fn known_variables() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut vars = BTreeSet::new();
    for line in readme.lines().filter(|l| l.starts_with("| `AQYL_")) {
        let cell = line.split('|').nth(1).unwrap_or("");
        for word in cell.split('`').filter(|w| w.starts_with("AQYL_")) {
            vars.insert(word.to_string());
        }
    }
    assert!(
        vars.contains("AQYL_MQTT_URL") && vars.contains("AQYL_STATE_DIR"),
        "the README's table of environment variables was not found: {vars:?}"
    );
    vars
}

fn assert_known(env: &Env, known: &BTreeSet<String>, whose: &str) {
    for name in env.keys().filter(|k| k.starts_with("AQYL_")) {
        assert!(
            known.contains(name),
            "{whose} sets {name}, which Aqyl does not read (the README's table: {known:?})"
        );
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} has no port"))
}

/// The HTTP port Aqyl listens on with this configuration and environment.
fn http_port(config: &Path, env: &Env) -> u16 {
    let loaded = aqyl_core::config::load(config, |k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{} with {env:?}: {e}", config.display()));
    let addr = loaded.config.http.addr.clone().unwrap_or_else(|| {
        panic!(
            "{} with {env:?} serves no HTTP: the probes have nothing to ask",
            config.display()
        )
    });
    port_of(&addr)
}

/// `aqyl check` with exactly this environment; its report.
fn aqyl_check(config: &Path, env: &Env) -> String {
    let out = Command::new(AQYL)
        .args(["check", "--config"])
        .arg(config)
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "aqyl check --config {} with {env:?} failed:\n{report}{}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// `env` with container paths rewritten to where `mounts` (container path, path here) are.
fn localize(env: &Env, mounts: &[(String, PathBuf)]) -> Env {
    let mut mounts = mounts.to_vec();
    mounts.sort_by_key(|(inside, _)| std::cmp::Reverse(inside.len()));
    env.iter()
        .map(|(k, v)| (k.clone(), localize_path(v, &mounts)))
        .collect()
}

fn localize_path(value: &str, mounts: &[(String, PathBuf)]) -> String {
    mounts
        .iter()
        .find_map(|(inside, here)| {
            let rest = value.strip_prefix(inside.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then(|| {
                here.join(rest.trim_start_matches('/'))
                    .display()
                    .to_string()
            })
        })
        .unwrap_or_else(|| value.to_string())
}

// ---- Dockerfile ----

/// deploy/docker/Dockerfile as (instruction, arguments), continuation lines joined.
struct Dockerfile(Vec<(String, String)>);

fn dockerfile() -> Dockerfile {
    let text = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                let (word, rest) = current
                    .split_once(char::is_whitespace)
                    .unwrap_or((&current, ""));
                out.push((word.to_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    Dockerfile(out)
}

impl Dockerfile {
    fn all<'a>(&'a self, instruction: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(i, _)| i == instruction)
            .map(|(_, args)| args.as_str())
    }

    /// The image's environment (ENV K=V ...).
    fn env(&self) -> Env {
        self.all("ENV")
            .flat_map(str::split_whitespace)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn exposed(&self) -> BTreeSet<u16> {
        self.all("EXPOSE")
            .flat_map(str::split_whitespace)
            .map(|p| p.split('/').next().unwrap().parse().unwrap())
            .collect()
    }
}

// ---- Compose ----

struct Compose {
    dir: PathBuf,
    doc: Yaml,
    /// deploy/compose/.env.example: what `${NAME}` stands for.
    vars: Env,
}

fn compose() -> Compose {
    let dir = repo().join("deploy/compose");
    let example = std::fs::read_to_string(dir.join(".env.example")).unwrap();
    let vars: Env = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let doc = interpolate_tree(&load_one(&dir.join("compose.yaml")), &vars);
    Compose { dir, doc, vars }
}

/// Compose's interpolation of every string: `${NAME}`, `${NAME:?message}`,
/// `${NAME:-default}` from `vars` (a name .env.example lacks fails), `$$` for `$`.
fn interpolate_tree(y: &Yaml, vars: &Env) -> Yaml {
    match y {
        Yaml::String(s) => Yaml::String(interpolate(s, vars)),
        Yaml::Array(a) => Yaml::Array(a.iter().map(|v| interpolate_tree(v, vars)).collect()),
        Yaml::Hash(h) => Yaml::Hash(
            h.iter()
                .map(|(k, v)| (k.clone(), interpolate_tree(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn interpolate(s: &str, vars: &Env) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .unwrap_or_else(|| panic!("compose.yaml: unclosed ${{ in {s:?}"));
            let name = &body[..body[..end].find([':', '-', '?']).unwrap_or(end)];
            let value = vars.get(name).unwrap_or_else(|| {
                panic!("compose.yaml uses ${{{name}}}, which .env.example does not define")
            });
            out.push_str(value);
            rest = &body[end + 1..];
        } else {
            panic!("compose.yaml: a bare $ in {s:?}: write ${{NAME}}, or $$ for a $");
        }
    }
    out.push_str(rest);
    out
}

fn services(c: &Compose) -> Vec<(String, &Yaml)> {
    entries(&c.doc["services"])
}

/// The services that run the Aqyl image.
fn aqyl_services(c: &Compose) -> Vec<(String, &Yaml)> {
    services(c)
        .into_iter()
        .filter(|(_, s)| {
            !s["build"].is_badvalue() || text(&s["image"]).is_some_and(|i| i.starts_with("aqyl:"))
        })
        .collect()
}

fn service_env(svc: &Yaml) -> Env {
    let e = &svc["environment"];
    match e.as_vec() {
        Some(items) => items
            .iter()
            .filter_map(|i| {
                let kv = text(i)?;
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
        None => entries(e)
            .into_iter()
            .map(|(k, v)| (k, text(v).unwrap_or_default()))
            .collect(),
    }
}

/// A service's volumes: (source, target, read-only). A bind mount's source starts with `.`
/// or `/`; anything else names a volume.
fn volumes(svc: &Yaml) -> Vec<(String, String, bool)> {
    list(&svc["volumes"])
        .iter()
        .map(|v| match text(v) {
            Some(short) => {
                let parts: Vec<&str> = short.split(':').collect();
                assert!(parts.len() >= 2, "volume {short:?}: source:target expected");
                (
                    parts[0].to_string(),
                    parts[1].to_string(),
                    parts.get(2) == Some(&"ro"),
                )
            }
            None => (
                must(&v["source"], "volume source"),
                must(&v["target"], "volume target"),
                v["read_only"].as_bool() == Some(true),
            ),
        })
        .collect()
}

fn is_bind(source: &str) -> bool {
    source.starts_with('.') || source.starts_with('/')
}

/// An Aqyl container of the compose file, laid out here: its bind mounts where they are,
/// each volume and secret in a temporary directory (a secret holding its .env.example value),
/// the image's environment under the service's, container paths rewritten.
struct Container {
    _dir: tempfile::TempDir,
    config: PathBuf,
    env: Env,
}

fn compose_container(c: &Compose, name: &str, svc: &Yaml) -> Container {
    let dir = tempfile::tempdir().unwrap();
    let mut mounts = Vec::new();
    for (source, target, _) in volumes(svc) {
        let here = if is_bind(&source) {
            c.dir.join(&source)
        } else {
            let p = dir.path().join("volumes").join(&source);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        mounts.push((target, here));
    }
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    for s in list(&svc["secrets"]) {
        let secret = must(s, "a service's secret");
        let source = &c.doc["secrets"][secret.as_str()];
        let value = match (text(&source["environment"]), text(&source["file"])) {
            (Some(var), _) => c.vars[&var].clone(),
            (None, Some(file)) => std::fs::read_to_string(c.dir.join(file)).unwrap(),
            _ => panic!("{name}: secret {secret} is not declared with a source"),
        };
        std::fs::write(secrets.join(&secret), format!("{value}\n")).unwrap();
    }
    mounts.push(("/run/secrets".into(), secrets));
    let mut env = dockerfile().env();
    env.extend(service_env(svc));
    let command: Vec<String> = list(&svc["command"]).iter().filter_map(text).collect();
    let config = command
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| command.get(i + 1))
        .unwrap_or_else(|| panic!("{name}: command has no --config: {command:?}"));
    Container {
        config: PathBuf::from(localize_path(config, &mounts)),
        env: localize(&env, &mounts),
        _dir: dir,
    }
}

// ---- Kubernetes ----

/// deploy/kubernetes as kustomize builds it: the objects of every resource file, and the
/// ConfigMap generators (with the directory their files are relative to).
#[derive(Default)]
struct Kube {
    objects: Vec<Yaml>,
    files: Vec<PathBuf>,
    generators: Vec<Generator>,
    namespace: Option<String>,
}

struct Generator {
    name: String,
    dir: PathBuf,
    /// (key, file)
    files: Vec<(String, String)>,
}

fn kube() -> Kube {
    let mut k = Kube::default();
    kustomize(&repo().join("deploy/kubernetes"), &mut k);
    k
}

fn kustomize(dir: &Path, k: &mut Kube) {
    let path = dir.join("kustomization.yaml");
    let doc = load_one(&path);
    if k.namespace.is_none() {
        k.namespace = text(&doc["namespace"]);
    }
    for r in list(&doc["resources"]) {
        let r = must(r, "resource");
        let target = dir.join(&r);
        if target.is_dir() {
            assert!(
                target.join("kustomization.yaml").is_file(),
                "{}: resource {r} is a directory without a kustomization.yaml",
                path.display()
            );
            kustomize(&target, k);
        } else {
            assert!(
                target.is_file(),
                "{}: resource {r} does not exist",
                path.display()
            );
            k.objects.extend(load(&target));
            k.files.push(target);
        }
    }
    for g in list(&doc["configMapGenerator"]) {
        let name = must(&g["name"], "configMapGenerator name");
        let mut files = Vec::new();
        for f in list(&g["files"]) {
            let f = must(f, "configMapGenerator file");
            let (key, file) = match f.split_once('=') {
                Some((key, file)) => (key.to_string(), file.to_string()),
                None => (f.rsplit('/').next().unwrap().to_string(), f.clone()),
            };
            // kustomize's default load restrictor refuses files outside the directory.
            assert!(
                Path::new(&file)
                    .components()
                    .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
                "{}: {file} is outside the kustomization's directory, which kustomize refuses \
                 (LoadRestrictionsRootOnly)",
                path.display()
            );
            assert!(
                dir.join(&file).is_file(),
                "{}: configMapGenerator file {file} does not exist",
                path.display()
            );
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
                "{}: {key:?} is not a valid ConfigMap key",
                path.display()
            );
            files.push((key, file));
        }
        k.generators.push(Generator {
            name,
            dir: dir.to_path_buf(),
            files,
        });
    }
}

fn object<'a>(k: &'a Kube, kind: &str, name: &str) -> &'a Yaml {
    k.objects
        .iter()
        .find(|o| {
            text(&o["kind"]).as_deref() == Some(kind)
                && text(&o["metadata"]["name"]).as_deref() == Some(name)
        })
        .unwrap_or_else(|| panic!("deploy/kubernetes has no {kind} {name}"))
}

fn statefulset(k: &Kube) -> &Yaml {
    k.objects
        .iter()
        .find(|o| text(&o["kind"]).as_deref() == Some("StatefulSet"))
        .expect("deploy/kubernetes has no StatefulSet")
}

fn container(sts: &Yaml) -> &Yaml {
    let c = &sts["spec"]["template"]["spec"]["containers"][0];
    assert!(!c.is_badvalue(), "the StatefulSet has no container");
    c
}

/// The container's ports by name.
fn container_ports(c: &Yaml) -> BTreeMap<String, u16> {
    list(&c["ports"])
        .iter()
        .map(|p| {
            let port = p["containerPort"].as_i64().expect("containerPort");
            (must(&p["name"], "port name"), u16::try_from(port).unwrap())
        })
        .collect()
}

fn secret_example() -> (String, Env) {
    let doc = load_one(&repo().join("deploy/kubernetes/secret.example.yaml"));
    let values = entries(&doc["stringData"])
        .into_iter()
        .map(|(k, v)| (k, must(v, "stringData")))
        .collect();
    (must(&doc["metadata"]["name"], "the Secret's name"), values)
}

/// The StatefulSet's pod 0 laid out here: the ConfigMap's items at their paths, the Secret's
/// example values as files, volumes as temporary directories, and the environment as the
/// kubelet would set it (the image's first), container paths rewritten.
fn kube_pod(k: &Kube) -> Container {
    let sts = statefulset(k);
    let c = container(sts);
    let pod = &sts["spec"]["template"]["spec"];
    let (secret_name, secret_values) = secret_example();
    let dir = tempfile::tempdir().unwrap();
    let claims: BTreeSet<String> = list(&sts["spec"]["volumeClaimTemplates"])
        .iter()
        .map(|t| must(&t["metadata"]["name"], "volumeClaimTemplate name"))
        .collect();
    let mut mounts = Vec::new();
    for m in list(&c["volumeMounts"]) {
        let name = must(&m["name"], "volumeMount name");
        let here = dir.path().join(&name);
        std::fs::create_dir_all(&here).unwrap();
        let volume = list(&pod["volumes"])
            .iter()
            .find(|v| text(&v["name"]).as_deref() == Some(&name));
        match volume {
            Some(v) if !v["configMap"].is_badvalue() => {
                let cm = must(&v["configMap"]["name"], "configMap name");
                let g = k
                    .generators
                    .iter()
                    .find(|g| g.name == cm)
                    .unwrap_or_else(|| panic!("volume {name}: no ConfigMap {cm} is generated"));
                for item in list(&v["configMap"]["items"]) {
                    let key = must(&item["key"], "item key");
                    let (_, file) = g
                        .files
                        .iter()
                        .find(|(have, _)| *have == key)
                        .unwrap_or_else(|| {
                            panic!("volume {name}: ConfigMap {cm} has no key {key}")
                        });
                    let to = here.join(must(&item["path"], "item path"));
                    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                    std::fs::copy(g.dir.join(file), to).unwrap();
                }
            }
            Some(v) if !v["secret"].is_badvalue() => {
                assert_eq!(
                    must(&v["secret"]["secretName"], "secretName"),
                    secret_name,
                    "volume {name}: not the Secret of secret.example.yaml"
                );
                for item in list(&v["secret"]["items"]) {
                    let key = must(&item["key"], "item key");
                    let value = secret_values.get(&key).unwrap_or_else(|| {
                        panic!("volume {name}: secret.example.yaml has no key {key}")
                    });
                    std::fs::write(here.join(must(&item["path"], "item path")), value).unwrap();
                }
            }
            Some(v) if !v["emptyDir"].is_badvalue() => {}
            Some(v) => panic!("volume {name}: a kind this test does not know: {v:?}"),
            None => assert!(
                claims.contains(&name),
                "volumeMount {name}: no such volume or volumeClaimTemplate"
            ),
        }
        mounts.push((must(&m["mountPath"], "mountPath"), here));
    }
    let mut env = dockerfile().env();
    for e in list(&c["env"]) {
        let name = must(&e["name"], "env name");
        let value = if let Some(v) = text(&e["value"]) {
            // $(NAME) is expanded from the variables defined before it, as the kubelet does.
            let mut v = v;
            while let Some(start) = v.find("$(") {
                let end = start + v[start..].find(')').expect("unclosed $(");
                let var = v[start + 2..end].to_string();
                let value = env.get(&var).unwrap_or_else(|| {
                    panic!("{name} uses $({var}), which no variable before it defines")
                });
                v.replace_range(start..=end, value);
            }
            v
        } else if let Some(field) = text(&e["valueFrom"]["fieldRef"]["fieldPath"]) {
            match field.as_str() {
                "metadata.labels['apps.kubernetes.io/pod-index']" => "0".into(),
                "metadata.namespace" => k.namespace.clone().expect("the kustomization's namespace"),
                other => panic!("{name}: a field this test does not know: {other}"),
            }
        } else {
            let r = &e["valueFrom"]["secretKeyRef"];
            assert_eq!(must(&r["name"], "secretKeyRef name"), secret_name, "{name}");
            let key = must(&r["key"], "secretKeyRef key");
            secret_values
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: secret.example.yaml has no key {key}"))
                .clone()
        };
        env.insert(name, value);
    }
    let args: Vec<String> = list(&c["args"]).iter().filter_map(text).collect();
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("the container's args have no --config: {args:?}"));
    Container {
        config: PathBuf::from(localize_path(config, &mounts)),
        env: localize(&env, &mounts),
        _dir: dir,
    }
}

// ---- the tests ----

#[test]
fn every_deploy_yaml_file_parses() {
    let mut files = Vec::new();
    for dir in ["deploy/compose", "deploy/kubernetes", "deploy/grafana"] {
        files_with(&repo().join(dir), &["yaml", "yml"], &mut files);
    }
    files.push(repo().join("config/kustomization.yaml"));
    assert!(files.len() >= 10, "{files:?}");
    for f in files {
        assert!(!load(&f).is_empty(), "{}: empty", f.display());
    }
}

#[test]
fn the_dockerfile_copies_what_exists_runs_as_a_user_and_exposes_both_ports() {
    let d = dockerfile();
    let from: Vec<&str> = d.all("FROM").collect();
    assert!(
        from[0].starts_with("rust:") && from[0].contains("bookworm"),
        "{from:?}"
    );
    assert!(
        from.last().unwrap().starts_with("debian:bookworm-slim"),
        "{from:?}"
    );

    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.trim().trim_matches('/'))
        .collect();
    assert!(
        ignored.contains(&"target"),
        ".dockerignore must leave out target/"
    );
    let mut copied = Vec::new();
    for args in d.all("COPY").filter(|a| !a.starts_with("--from")) {
        let words: Vec<&str> = args.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(
                repo().join(source).exists(),
                "the Dockerfile copies {source}, which is not in the repository"
            );
            assert!(
                !ignored
                    .iter()
                    .any(|i| source == *i || source.starts_with(&format!("{i}/"))),
                "the Dockerfile copies {source}, which .dockerignore leaves out"
            );
            copied.push(source.to_string());
        }
    }
    let health = d.all("HEALTHCHECK").next().expect("a HEALTHCHECK");
    assert!(health.contains("aqyl-health"), "{health}");
    assert!(
        copied.contains(&"deploy/docker/aqyl-health".to_string()),
        "{copied:?}"
    );

    let user = d
        .all("USER")
        .last()
        .expect("a USER: the image must not run as root");
    let uid = user.split(':').next().unwrap();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u != 0),
        "USER {user}: a numeric non-root user (Kubernetes' runAsNonRoot can verify only a number)"
    );

    let env = d.env();
    assert_known(&env, &known_variables(), "the Dockerfile");
    let http = port_of(env.get("AQYL_HTTP_ADDR").expect("ENV AQYL_HTTP_ADDR"));
    assert!(
        d.exposed().contains(&http),
        "EXPOSE {:?} lacks HTTP {http}",
        d.exposed()
    );
    assert_eq!(d.exposed().len(), 2, "EXPOSE the HTTP and the cluster port");
    assert!(d.all("CMD").next().unwrap().contains("/etc/aqyl/aqyl.toml"));
    assert_eq!(
        env.get("AQYL_STATE_DIR").map(String::as_str),
        Some("/var/lib/aqyl")
    );
}

#[test]
fn the_image_health_probe_tells_200_from_503() {
    // A one-request server answering `status`; returns the request line it got.
    let serve = |status: &'static str| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "the probe closed before its request was complete");
                request.extend_from_slice(&buf[..n]);
            }
            write!(stream, "HTTP/1.1 {status}\r\ncontent-length: 3\r\n\r\nok\n").unwrap();
            String::from_utf8_lossy(&request)
                .lines()
                .next()
                .unwrap()
                .to_string()
        });
        (port, server)
    };
    let probe = |args: &[String], env: &[(&str, String)]| {
        Command::new("bash")
            .arg(repo().join("deploy/docker/aqyl-health"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    };

    let (port, server) = serve("200 OK");
    let out = probe(&[format!("http://127.0.0.1:{port}/health")], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.join().unwrap(), "GET /health HTTP/1.0");

    let (port, server) = serve("503 Service Unavailable");
    let out = probe(&[format!("http://127.0.0.1:{port}/ready")], &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("503"));
    assert_eq!(server.join().unwrap(), "GET /ready HTTP/1.0");

    // Without an argument: /health on the port of AQYL_HTTP_ADDR (as the image's HEALTHCHECK).
    let (port, server) = serve("200 OK");
    let out = probe(&[], &[("AQYL_HTTP_ADDR", format!("0.0.0.0:{port}"))]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.join().unwrap(), "GET /health HTTP/1.0");

    // Nothing listening.
    let port = aqyl_tests::free_port();
    let out = probe(&[format!("http://127.0.0.1:{port}/health")], &[]);
    assert!(!out.status.success());
}

#[test]
fn compose_names_only_files_volumes_secrets_and_services_that_exist() {
    let c = compose();
    let names: BTreeSet<String> = services(&c).into_iter().map(|(n, _)| n).collect();
    let volumes_declared: BTreeSet<String> = entries(&c.doc["volumes"])
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let secrets_declared = entries(&c.doc["secrets"]);
    for (name, source) in &secrets_declared {
        match (text(&source["environment"]), text(&source["file"])) {
            (Some(var), _) => assert!(
                c.vars.contains_key(&var),
                "secret {name} comes from {var}, which .env.example does not define"
            ),
            (None, Some(file)) => assert!(c.dir.join(&file).is_file(), "secret {name}: {file}"),
            _ => panic!("secret {name} has neither environment nor file"),
        }
    }
    for (name, svc) in services(&c) {
        let build = &svc["build"];
        if !build.is_badvalue() {
            let context = c.dir.join(text(&build["context"]).or(text(build)).unwrap());
            assert!(
                context.is_dir(),
                "{name}: build context {}",
                context.display()
            );
            let file =
                context.join(text(&build["dockerfile"]).unwrap_or_else(|| "Dockerfile".into()));
            assert!(file.is_file(), "{name}: Dockerfile {}", file.display());
            assert_eq!(
                file.canonicalize().unwrap(),
                repo()
                    .join("deploy/docker/Dockerfile")
                    .canonicalize()
                    .unwrap()
            );
            // COPY paths in the Dockerfile are relative to the repository's root.
            assert_eq!(
                context.canonicalize().unwrap(),
                repo().canonicalize().unwrap()
            );
        }
        for (source, target, _) in volumes(svc) {
            if is_bind(&source) {
                assert!(
                    c.dir.join(&source).exists(),
                    "{name}: {source} (mounted at {target}) does not exist"
                );
            } else {
                assert!(
                    volumes_declared.contains(&source),
                    "{name}: volume {source} is not declared under volumes:"
                );
            }
        }
        for s in list(&svc["secrets"]) {
            let s = must(s, "secret");
            assert!(
                secrets_declared.iter().any(|(n, _)| *n == s),
                "{name}: secret {s} is not declared under secrets:"
            );
        }
        for (dep, how) in entries(&svc["depends_on"]) {
            assert!(
                names.contains(&dep),
                "{name} depends on {dep}, which is no service"
            );
            if text(&how["condition"]).as_deref() == Some("service_healthy") {
                assert!(
                    !c.doc["services"][dep.as_str()]["healthcheck"]["test"].is_badvalue(),
                    "{name} waits for {dep} to be healthy, which has no healthcheck"
                );
            }
        }
    }
}

#[test]
fn compose_processes_are_0_to_n_and_agree_on_hosts_ports_and_probes() {
    let c = compose();
    let known = known_variables();
    let exposed = dockerfile().exposed();
    let aqyl = aqyl_services(&c);
    assert!(
        aqyl.len() >= 2,
        "a cluster of at least 2 processes: {aqyl:?}"
    );
    let mut by_index = BTreeMap::new();
    let mut hosts_lists = BTreeSet::new();
    let mut state_volumes = BTreeSet::new();
    let mut published = BTreeSet::new();
    for (name, svc) in &aqyl {
        let env = service_env(svc);
        assert_known(&env, &known, &format!("compose service {name}"));
        let process: usize = env
            .get("AQYL_CLUSTER_PROCESS")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{name}: no AQYL_CLUSTER_PROCESS index"));
        assert!(
            by_index.insert(process, name.clone()).is_none(),
            "two services are process {process}"
        );
        hosts_lists.insert(
            env.get("AQYL_CLUSTER_HOSTS")
                .unwrap_or_else(|| panic!("{name}: no AQYL_CLUSTER_HOSTS"))
                .clone(),
        );
        let mounts = volumes(svc);
        let state = env
            .get("AQYL_STATE_DIR")
            .unwrap_or_else(|| panic!("{name}: no AQYL_STATE_DIR"));
        let (volume, _, _) = mounts
            .iter()
            .find(|(_, target, _)| target == state)
            .unwrap_or_else(|| {
                panic!("{name}: nothing is mounted at AQYL_STATE_DIR {state}: its state would die with the container")
            });
        assert!(!is_bind(volume), "{name}: state on a named volume");
        assert!(
            state_volumes.insert(volume.clone()),
            "{name} shares state volume {volume} with another process"
        );
        let (_, _, read_only) = mounts
            .iter()
            .find(|(_, target, _)| target == "/etc/aqyl")
            .unwrap_or_else(|| panic!("{name}: no configuration mounted at /etc/aqyl"));
        assert!(read_only, "{name}: mount the configuration read-only");

        let container = compose_container(&c, name, svc);
        let http = http_port(&container.config, &container.env);
        assert!(exposed.contains(&http), "the image does not EXPOSE {http}");
        let probe: Vec<String> = list(&svc["healthcheck"]["test"])
            .iter()
            .filter_map(text)
            .collect();
        assert!(
            probe
                .iter()
                .any(|a| a.contains(&format!("http://127.0.0.1:{http}/health"))),
            "{name}: the healthcheck {probe:?} must ask /health on HTTP port {http}"
        );
        for p in list(&svc["ports"]) {
            let p = must(p, "port");
            assert_eq!(
                port_of(&p),
                http,
                "{name}: publishes {p}, not its HTTP port"
            );
            let host_side = p.rsplit_once(':').unwrap().0.to_string();
            assert!(
                published.insert(host_side.clone()),
                "{name}: {host_side} is published twice"
            );
        }
    }
    assert_eq!(
        hosts_lists.len(),
        1,
        "the processes disagree on AQYL_CLUSTER_HOSTS: {hosts_lists:?}"
    );
    let hosts_list = hosts_lists.pop_first().unwrap();
    let hosts: Vec<&str> = hosts_list.split(',').collect();
    assert_eq!(
        by_index.keys().copied().collect::<Vec<_>>(),
        (0..aqyl.len()).collect::<Vec<_>>(),
        "process indices must be 0..{}",
        aqyl.len()
    );
    assert_eq!(hosts.len(), aqyl.len(), "one host per process: {hosts:?}");
    let cluster = port_of(hosts[0]);
    assert!(
        exposed.contains(&cluster),
        "the image does not EXPOSE cluster port {cluster}"
    );
    for (i, name) in &by_index {
        assert_eq!(
            hosts[*i],
            format!("{name}:{cluster}"),
            "process {i} is service {name}"
        );
    }
}

#[test]
fn compose_config_passes_aqyl_check_with_each_process_environment() {
    let c = compose();
    for (name, svc) in aqyl_services(&c) {
        let container = compose_container(&c, &name, svc);
        let report = aqyl_check(&container.config, &container.env);
        assert!(report.contains("mqtt://mosquitto:1883"), "{name}: {report}");
    }
}

#[test]
fn compose_grafana_and_prometheus_read_the_compose_services() {
    let c = compose();
    let names: BTreeSet<String> = services(&c).into_iter().map(|(n, _)| n).collect();
    let grafana = volumes(&c.doc["services"]["grafana"]);
    let mounted = |prefix: &str| {
        grafana
            .iter()
            .filter(|(_, target, _)| target.starts_with(prefix))
            .map(|(source, target, _)| (c.dir.join(source), target.clone()))
            .collect::<Vec<_>>()
    };

    let mut uids = BTreeSet::new();
    let sources = mounted("/etc/grafana/provisioning/datasources/");
    assert!(!sources.is_empty(), "no data sources provisioned");
    for (file, _) in &sources {
        for d in list(&load_one(file)["datasources"]) {
            let url = must(&d["url"], "datasource url");
            let host = url
                .trim_start_matches("http://")
                .split([':', '/'])
                .next()
                .unwrap();
            assert!(
                names.contains(host),
                "{}: {url} names no compose service",
                file.display()
            );
            uids.insert(must(&d["uid"], "datasource uid"));
        }
    }
    let providers = mounted("/etc/grafana/provisioning/dashboards/");
    assert!(!providers.is_empty(), "no dashboard provider provisioned");
    let mut dashboards = 0;
    for (file, _) in &providers {
        for p in list(&load_one(file)["providers"]) {
            let path = must(&p["options"]["path"], "provider path");
            let (dir, _) = mounted(path.as_str())
                .into_iter()
                .find(|(_, target)| *target == path)
                .unwrap_or_else(|| panic!("nothing is mounted at the dashboards' path {path}"));
            let mut files = Vec::new();
            files_with(&dir, &["json"], &mut files);
            for f in files {
                let json: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
                let mut used = BTreeSet::new();
                datasource_uids(&json, &mut used);
                let missing: Vec<_> = used.difference(&uids).collect();
                assert!(
                    missing.is_empty(),
                    "{}: data sources {missing:?} are not provisioned",
                    f.display()
                );
                dashboards += 1;
            }
        }
    }
    assert!(dashboards > 0, "no dashboard mounted");

    // Prometheus scrapes every Aqyl process on its HTTP port, with a secret it has.
    let prometheus = &c.doc["services"]["prometheus"];
    let (source, _, _) = volumes(prometheus)
        .into_iter()
        .find(|(_, target, _)| target == "/etc/prometheus/prometheus.yml")
        .expect("prometheus.yml mounted");
    let config = load_one(&c.dir.join(source));
    let job = &config["scrape_configs"][0];
    let targets: BTreeSet<String> = list(&job["static_configs"])
        .iter()
        .flat_map(|s| list(&s["targets"]).iter().filter_map(text))
        .collect();
    let expected: BTreeSet<String> = aqyl_services(&c)
        .into_iter()
        .map(|(name, svc)| {
            let container = compose_container(&c, &name, svc);
            format!("{name}:{}", http_port(&container.config, &container.env))
        })
        .collect();
    assert_eq!(targets, expected);
    let credentials = must(
        &job["authorization"]["credentials_file"],
        "credentials_file",
    );
    let secret = credentials
        .strip_prefix("/run/secrets/")
        .expect("a compose secret");
    assert!(
        list(&prometheus["secrets"])
            .iter()
            .any(|s| text(s).as_deref() == Some(secret)),
        "prometheus reads {credentials} but is not given secret {secret}"
    );
}

/// Every `"datasource": {"uid": ...}` in a Grafana dashboard.
fn datasource_uids(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(uid) = map
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(|u| u.as_str())
            {
                out.insert(uid.to_string());
            }
            map.values().for_each(|v| datasource_uids(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| datasource_uids(v, out)),
        _ => {}
    }
}

#[test]
fn kubernetes_kustomization_generates_the_whole_shipped_config_from_files_that_exist() {
    let k = kube();
    assert!(
        !k.files.iter().any(|f| f.ends_with("secret.example.yaml")),
        "the kustomization must not deploy the example Secret's placeholders"
    );
    let sts = statefulset(&k);
    let volume = list(&sts["spec"]["template"]["spec"]["volumes"])
        .iter()
        .find(|v| !v["configMap"].is_badvalue())
        .expect("a ConfigMap volume");
    let cm = must(&volume["configMap"]["name"], "configMap name");
    let g = k
        .generators
        .iter()
        .find(|g| g.name == cm)
        .unwrap_or_else(|| panic!("no configMapGenerator makes {cm}"));
    let items: BTreeMap<String, String> = list(&volume["configMap"]["items"])
        .iter()
        .map(|i| (must(&i["key"], "key"), must(&i["path"], "path")))
        .collect();
    for (key, file) in &g.files {
        assert_eq!(
            items.get(key),
            Some(file),
            "ConfigMap key {key} ({file}) must be mounted at its own path"
        );
    }
    assert_eq!(
        items.len(),
        g.files.len(),
        "items name keys the ConfigMap lacks: {items:?}"
    );
    // Every file Aqyl reads from the configuration directory is in the ConfigMap.
    let mut shipped = Vec::new();
    files_with(&g.dir, &["toml", "csv"], &mut shipped);
    for f in shipped {
        let rel = f
            .strip_prefix(&g.dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            g.files.iter().any(|(_, file)| *file == rel),
            "{} is not in ConfigMap {cm}: add it to {}/kustomization.yaml and the StatefulSet's items",
            f.display(),
            g.dir.display()
        );
    }
}

#[test]
fn kubernetes_statefulset_lists_one_host_per_replica_under_its_headless_service() {
    let k = kube();
    let known = known_variables();
    let sts = statefulset(&k);
    let name = must(&sts["metadata"]["name"], "name");
    let replicas = sts["spec"]["replicas"].as_i64().expect("replicas");
    assert_eq!(
        text(&sts["spec"]["podManagementPolicy"]).as_deref(),
        Some("Parallel"),
        "every process waits for the others: start them together"
    );
    let service = must(&sts["spec"]["serviceName"], "serviceName");
    let headless = object(&k, "Service", &service);
    assert_eq!(
        text(&headless["spec"]["clusterIP"]).as_deref(),
        Some("None")
    );
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true),
        "processes must find each other before they are ready"
    );
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (key, value) in entries(&headless["spec"]["selector"]) {
        assert_eq!(
            text(&labels[key.as_str()]),
            text(value),
            "the Service selects no pod"
        );
    }

    let c = container(sts);
    let ports = container_ports(c);
    let cluster = *ports
        .get("cluster")
        .expect("a container port named cluster");
    assert!(
        dockerfile().exposed().contains(&cluster),
        "the image does not EXPOSE {cluster}"
    );
    assert!(
        list(&headless["spec"]["ports"]).iter().any(|p| {
            text(&p["port"]) == Some(cluster.to_string())
                && matches!(text(&p["targetPort"]), Some(t) if t == "cluster" || t == cluster.to_string())
        }),
        "the headless Service does not carry cluster port {cluster}"
    );
    let env: Vec<(String, &Yaml)> = list(&c["env"])
        .iter()
        .map(|e| (must(&e["name"], "env name"), e))
        .collect();
    let names: Env = env
        .iter()
        .map(|(n, _)| (n.clone(), String::new()))
        .collect();
    assert_known(&names, &known, "the StatefulSet");
    let find = |var: &str| {
        env.iter()
            .find(|(n, _)| n == var)
            .map(|(_, e)| *e)
            .unwrap_or_else(|| panic!("the StatefulSet does not set {var}"))
    };
    assert_eq!(
        text(&find("AQYL_CLUSTER_PROCESS")["valueFrom"]["fieldRef"]["fieldPath"]).as_deref(),
        Some("metadata.labels['apps.kubernetes.io/pod-index']"),
        "AQYL_CLUSTER_PROCESS from the pod-index label"
    );
    let hosts = must(&find("AQYL_CLUSTER_HOSTS")["value"], "AQYL_CLUSTER_HOSTS");
    let hosts: Vec<&str> = hosts.split(',').collect();
    assert_eq!(
        hosts.len() as i64,
        replicas,
        "one host per replica: {hosts:?}"
    );
    for (i, host) in hosts.iter().enumerate() {
        let (dns, port) = host
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{host}: no port"));
        assert_eq!(port, cluster.to_string(), "{host}: not the cluster port");
        let labels: Vec<&str> = dns.split('.').collect();
        assert_eq!(
            labels[0],
            format!("{name}-{i}"),
            "{host}: entry {i} must be pod {name}-{i}"
        );
        assert_eq!(
            labels.get(1),
            Some(&service.as_str()),
            "{host}: not under Service {service}"
        );
        if labels.len() > 2 {
            let namespace_ok =
                labels[2] == "$(POD_NAMESPACE)" || Some(labels[2]) == k.namespace.as_deref();
            assert!(
                namespace_ok && labels.get(3) == Some(&"svc"),
                "{host}: <pod>.<service>.<namespace>.svc..."
            );
        }
    }
}

#[test]
fn kubernetes_pod_probes_its_http_port_runs_locked_down_and_its_config_passes_aqyl_check() {
    let k = kube();
    let sts = statefulset(&k);
    let c = container(sts);
    let pod = kube_pod(&k);
    let http = http_port(&pod.config, &pod.env);
    let ports = container_ports(c);
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(text(&get["path"]).as_deref(), Some(path), "{probe}");
        let port = must(&get["port"], probe);
        let port = ports
            .get(&port)
            .copied()
            .unwrap_or_else(|| port.parse().unwrap());
        assert_eq!(
            port, http,
            "{probe} asks port {port}; Aqyl listens on {http}"
        );
    }
    let report = aqyl_check(&pod.config, &pod.env);
    assert!(report.contains("mqtt://mosquitto:1883"), "{report}");
    // State on the claim, where AQYL_STATE_DIR points.
    let state = state_volume(c);
    let claims: Vec<String> = list(&sts["spec"]["volumeClaimTemplates"])
        .iter()
        .filter_map(|t| text(&t["metadata"]["name"]))
        .collect();
    assert!(
        claims.contains(&state),
        "AQYL_STATE_DIR is not on a volumeClaimTemplate"
    );

    let security = &sts["spec"]["template"]["spec"]["securityContext"];
    assert_eq!(security["runAsNonRoot"].as_bool(), Some(true));
    let user = dockerfile().all("USER").last().unwrap().to_string();
    assert_eq!(
        Some(user.split(':').next().unwrap().to_string()),
        text(&security["runAsUser"]),
        "runAsUser is the image's user"
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    for bound in ["requests", "limits"] {
        assert!(
            text(&c["resources"][bound]["memory"]).is_some(),
            "resources.{bound}.memory"
        );
    }
}

/// The volume mounted where the container's AQYL_STATE_DIR points.
fn state_volume(c: &Yaml) -> String {
    let state = list(&c["env"])
        .iter()
        .find(|e| text(&e["name"]).as_deref() == Some("AQYL_STATE_DIR"))
        .and_then(|e| text(&e["value"]))
        .or_else(|| dockerfile().env().get("AQYL_STATE_DIR").cloned())
        .expect("AQYL_STATE_DIR");
    list(&c["volumeMounts"])
        .iter()
        .find(|m| text(&m["mountPath"]).as_deref() == Some(state.as_str()))
        .and_then(|m| text(&m["name"]))
        .unwrap_or_else(|| panic!("nothing is mounted at AQYL_STATE_DIR {state}"))
}
