//! docker-compose.yml, its secured variant docker-compose.secure.yml, and the Dockerfile,
//! checked without Docker (these machines have none).
//!
//! Every fleetpulse service of the compose file has its `FLEETPULSE_*` variables loaded by
//! fleetpulse's own configuration code, as the binary loads them at start-up, so a misspelt key
//! or a malformed value fails here as it would fail the container; its command parses as a real
//! subcommand; it listens on 0.0.0.0 at the default port, which is the port published and the
//! port its health check asks; its topics are the defaults; the addresses it is given for Kafka,
//! the schema registry, ClickHouse and Redis name services of the file, on the ports those
//! serve, and it waits for them to be healthy. For the secured file, scripts/compose-secrets.sh
//! (its one-off step) runs into a temp dir: every secret a service names is one it mounts and
//! the script made, the services load with those files, the certificate verifies for every
//! service name, and the passwords the fleetpulse services send are the ones Kafka, ClickHouse,
//! Redis and the registry hold. The Dockerfile builds the locked `fleetpulse`
//! package and ships the binary, with what the health checks run.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// figment::Jail's closures return figment's own (large) error type.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use fleetpulse::cli::{Cli, Command};
use fleetpulse::config::{self, Config, Topics};
use serde::Deserialize;
use serde::de::IgnoredAny;

/// What a required variable (`${VAR:?message}`) stands for here. Random enough for the
/// bridge's secret, and not a number, as a real secret would be.
const REQUIRED: &str = "Cc5rT8vK3mW2qX7nB9yL4cH1fJ6dG0sA5eU8iO3kR2tV7wZ9";

/// The repository root, where docker-compose.yml and the Dockerfile live.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e package sits in the workspace")
        .to_path_buf()
}

/// The parts of a compose file these checks read; the rest is ignored.
#[derive(Debug, Deserialize)]
struct Compose {
    services: BTreeMap<String, Service>,
    #[serde(default)]
    volumes: BTreeMap<String, IgnoredAny>,
    #[serde(default)]
    secrets: BTreeMap<String, SecretFile>,
}

/// The compose files checked here.
const FILES: [&str; 2] = ["docker-compose.yml", "docker-compose.secure.yml"];

/// A compose secret: a file beside the compose file.
#[derive(Debug, Deserialize)]
struct SecretFile {
    file: Option<String>,
}

/// A secret a service mounts: by name at /run/secrets/NAME, or at a target of its own.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SecretUse {
    Short(String),
    Long {
        source: String,
        target: Option<String>,
    },
}

impl SecretUse {
    /// `(secret, path in the container)`.
    fn mount(&self) -> (String, String) {
        match self {
            SecretUse::Short(name) => (name.clone(), format!("/run/secrets/{name}")),
            SecretUse::Long { source, target } => {
                let target = target.clone().unwrap_or_else(|| source.clone());
                let path = if target.starts_with('/') {
                    target
                } else {
                    format!("/run/secrets/{target}")
                };
                (source.clone(), path)
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Service {
    image: Option<String>,
    build: Option<Build>,
    command: Option<Words>,
    entrypoint: Option<Words>,
    environment: Environment,
    ports: Vec<Port>,
    volumes: Vec<Mount>,
    healthcheck: Option<Healthcheck>,
    depends_on: DependsOn,
    restart: Option<String>,
    profiles: Vec<String>,
    secrets: Vec<SecretUse>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Build {
    Context(String),
    Full {
        context: Option<String>,
        dockerfile: Option<String>,
    },
}

/// A command line written as one string or as a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Words {
    One(String),
    Many(Vec<String>),
}

impl Words {
    fn list(&self) -> Vec<String> {
        match self {
            Words::One(line) => line.split_whitespace().map(str::to_string).collect(),
            Words::Many(words) => words.clone(),
        }
    }
}

/// `environment:` as a mapping or as a list of `KEY=VALUE`. A value left out is taken from the
/// host's environment by compose.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Environment {
    Map(BTreeMap<String, Option<String>>),
    List(Vec<String>),
}

impl Default for Environment {
    fn default() -> Environment {
        Environment::Map(BTreeMap::new())
    }
}

impl Environment {
    /// Each variable with its value as written, before interpolation.
    fn entries(&self) -> Vec<(String, Option<String>)> {
        match self {
            Environment::Map(map) => map.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Environment::List(list) => list
                .iter()
                .map(|entry| match entry.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (entry.clone(), None),
                })
                .collect(),
        }
    }

    /// The value of `key` as written, if set.
    fn raw(&self, key: &str) -> Option<String> {
        self.entries()
            .into_iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v)
    }
}

/// A number or a string (compose takes either for a published port).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(u64),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(text) => text.clone(),
            Scalar::Number(n) => n.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Port {
    Short(String),
    Number(u16),
    Long {
        target: u16,
        published: Option<Scalar>,
    },
}

impl Port {
    /// `(host port, container port)`.
    fn mapping(&self) -> Result<(Option<u16>, u16), String> {
        fn parse(text: &str) -> Result<u16, String> {
            text.parse()
                .map_err(|_| format!("port {text:?} is not a single port number"))
        }
        match self {
            Port::Number(container) => Ok((None, *container)),
            Port::Long { target, published } => {
                let host = match published {
                    Some(p) => Some(parse(&interpolate(&p.text())?)?),
                    None => None,
                };
                Ok((host, *target))
            }
            Port::Short(spec) => {
                let spec = interpolate(spec)?;
                let spec = spec.split_once('/').map_or(spec.as_str(), |(p, _)| p);
                // [container, host, host ip]: an IPv6 host ip keeps its colons.
                let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
                let host = match parts.get(1) {
                    Some(h) => Some(parse(h)?),
                    None => None,
                };
                Ok((host, parse(parts[0])?))
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Mount {
    Short(String),
    Long {
        #[serde(rename = "type")]
        kind: Option<String>,
        source: Option<String>,
        target: String,
    },
}

impl Mount {
    /// `(type if written, source, mount point)`.
    fn parts(&self) -> Option<(Option<&str>, String, String)> {
        match self {
            Mount::Short(spec) => {
                let mut parts = spec.split(':');
                Some((None, parts.next()?.to_string(), parts.next()?.to_string()))
            }
            Mount::Long {
                kind,
                source,
                target,
            } => Some((kind.as_deref(), source.clone()?, target.clone())),
        }
    }

    /// `(host path, mount point)` when this binds a file or directory of the host.
    fn bind(&self) -> Option<(String, String)> {
        let (kind, source, target) = self.parts()?;
        let path = source.starts_with("./") || source.starts_with('/');
        (kind.is_none_or(|k| k == "bind") && path).then_some((source, target))
    }

    /// `(named volume, mount point)` when this mounts one of `named`.
    fn named_volume(&self, named: &BTreeSet<String>) -> Option<(String, String)> {
        let (kind, source, target) = self.parts()?;
        (kind.is_none_or(|k| k == "volume") && named.contains(&source)).then_some((source, target))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Healthcheck {
    test: Option<Words>,
    disable: bool,
}

impl Healthcheck {
    /// The command's words, or `None` when the check is disabled.
    fn words(&self) -> Option<Vec<String>> {
        if self.disable {
            return None;
        }
        match self.test.as_ref()? {
            Words::One(shell) => Some(shell.split_whitespace().map(str::to_string).collect()),
            Words::Many(words) => match words.first().map(String::as_str) {
                Some("CMD") => Some(words[1..].to_vec()),
                Some("CMD-SHELL") => Some(
                    words[1..]
                        .join(" ")
                        .split_whitespace()
                        .map(str::to_string)
                        .collect(),
                ),
                _ => None,
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, Dependency>),
}

impl Default for DependsOn {
    fn default() -> DependsOn {
        DependsOn::List(Vec::new())
    }
}

#[derive(Debug, Deserialize)]
struct Dependency {
    condition: Option<String>,
}

impl DependsOn {
    /// Each service depended on, with its condition (the list form means `service_started`).
    fn conditions(&self) -> BTreeMap<String, String> {
        let started = || "service_started".to_string();
        match self {
            DependsOn::List(names) => names.iter().map(|n| (n.clone(), started())).collect(),
            DependsOn::Map(map) => map
                .iter()
                .map(|(n, d)| (n.clone(), d.condition.clone().unwrap_or_else(started)))
                .collect(),
        }
    }
}

impl Service {
    /// Built from this repository's Dockerfile: one of ours.
    fn is_fleetpulse(&self) -> bool {
        self.build.is_some()
    }

    fn image_starts_with(&self, prefix: &str) -> bool {
        self.image.as_deref().is_some_and(|i| i.starts_with(prefix))
    }
}

/// Compose's interpolation of `value`: `$$` is a dollar, a required `${VAR:?message}` or
/// `${VAR?message}` becomes [`REQUIRED`], `${VAR:-default}` or `${VAR-default}` its default.
/// A bare `${VAR}` or `$VAR`, which compose silently turns into an empty string when VAR is
/// unset, is refused.
fn interpolate(value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {value:?}"))?;
            let expression = &body[..end];
            let name_end = expression
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expression.len());
            let (name, modifier) = expression.split_at(name_end);
            if modifier.starts_with(":?") || modifier.starts_with('?') {
                out.push_str(REQUIRED);
            } else if let Some(default) = modifier
                .strip_prefix(":-")
                .or_else(|| modifier.strip_prefix('-'))
            {
                out.push_str(default);
            } else {
                return Err(format!(
                    "${{{expression}}} in {value:?} is empty when {name} is unset: give it a default (:-) or make it required (:?)"
                ));
            }
            rest = &body[end + 1..];
        } else {
            return Err(format!(
                "a bare $ in {value:?}: write $$ for a dollar, or ${{VAR:?message}}"
            ));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `scheme://[user@]host:port[/path]` or `host:port`, as `(host, port, path)`.
fn address(text: &str) -> Option<(String, u16, String)> {
    let rest = text.split_once("://").map_or(text, |(_, r)| r);
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = authority.rsplit_once(':')?;
    Some((host.to_string(), port.parse().ok()?, path.to_string()))
}

/// Loads the configuration the way the binary does (`config::load` without a file or flags)
/// from exactly `env`, as a container whose image sets no `FLEETPULSE_` variable would.
fn load_config(env: &BTreeMap<String, String>) -> Result<Config, String> {
    let mut loaded = None;
    figment::Jail::try_with(|jail| {
        // The test's own environment (FLEETPULSE_CACHE in CI, say) must not mask a mistake.
        jail.clear_env();
        for (key, value) in env {
            jail.set_env(key, value);
        }
        loaded = Some(config::load(None, &[]));
        Ok(())
    })
    .map_err(|e| e.to_string())?;
    loaded
        .expect("the jail ran the load")
        .map_err(|e| e.to_string())
}

/// What a subcommand is, for the checks that depend on it; `None` for commands that are not
/// long-running services.
fn kind(command: &Command) -> Option<&'static str> {
    match command {
        Command::Pipeline(_) => Some("pipeline"),
        Command::Sink(_) => Some("sink"),
        Command::Bridge(_) => Some("bridge"),
        Command::Registry(_) => Some("registry"),
        Command::Generate(_) => Some("generate"),
        _ => None,
    }
}

/// Where a command serves its HTTP endpoints: the key, the address it has, and its default.
fn listener(command: &Command, config: &Config) -> Option<(&'static str, SocketAddr, SocketAddr)> {
    let defaults = Config::default();
    match command {
        Command::Pipeline(_) => Some((
            "pipeline.listen",
            config.pipeline.listen,
            defaults.pipeline.listen,
        )),
        Command::Sink(_) => Some((
            "clickhouse.listen",
            config.clickhouse.listen,
            defaults.clickhouse.listen,
        )),
        Command::Bridge(_) => Some((
            "bridge.listen",
            config.bridge.listen,
            defaults.bridge.listen,
        )),
        Command::Registry(_) => Some((
            "registry.listen",
            config.registry.listen,
            defaults.registry.listen,
        )),
        _ => None,
    }
}

/// Whether a command serves its HTTP endpoints over TLS.
fn serves_tls(command: &Command, config: &Config) -> bool {
    match command {
        Command::Bridge(_) => config.bridge.tls_cert_file.is_some(),
        Command::Registry(_) => config.registry.tls_cert_file.is_some(),
        _ => false,
    }
}

/// A fleetpulse service of the compose file, as the binary would see it.
struct Loaded {
    name: String,
    kind: &'static str,
    /// Its variables, interpolated.
    env: BTreeMap<String, String>,
    cli: Cli,
    config: Config,
}

/// Would `service` start with its command and variables? Checked as the binary checks them at
/// start-up: the command line, the configuration, and the command's own requirements.
fn load_service(name: &str, service: &Service, secrets: &Secrets) -> Result<Loaded, String> {
    if service.entrypoint.is_some() {
        return Err(
            "sets an entrypoint: the image's is `fleetpulse`, the command picks the service".into(),
        );
    }
    let args = service.command.as_ref().map(Words::list).ok_or(
        "has no command: the image's entrypoint is `fleetpulse`, the command picks the service",
    )?;
    if let Some(flag) = args.iter().find(|a| a.starts_with('-')) {
        return Err(format!(
            "command {args:?} has the flag {flag}: configure services through FLEETPULSE_* variables only"
        ));
    }
    let argv = std::iter::once("fleetpulse".to_string()).chain(args.iter().cloned());
    let cli = Cli::try_parse_from(argv)
        .map_err(|e| format!("command {args:?} is not a fleetpulse command line: {e}"))?;
    let kind = kind(&cli.command)
        .ok_or_else(|| format!("command {args:?} is not a long-running fleetpulse service"))?;

    let mut env = BTreeMap::new();
    for (key, value) in service.environment.entries() {
        let value = value.ok_or_else(|| {
            format!("{key} has no value, so compose takes it from the host, unchecked")
        })?;
        if !key.starts_with("FLEETPULSE_") || key == "FLEETPULSE_CONFIG" {
            return Err(format!(
                "{key}: fleetpulse services are configured through FLEETPULSE_SECTION__KEY variables only (no config file in the image)"
            ));
        }
        let value = interpolate(&value).map_err(|e| format!("{key}: {e}"))?;
        let value = secrets
            .resolve(&value, service)
            .map_err(|e| format!("{key}: {e}"))?;
        env.insert(key, value);
    }
    let config =
        load_config(&env).map_err(|e| format!("its FLEETPULSE_* variables do not load:\n  {e}"))?;
    // config.rs skips a few FLEETPULSE_ names that are not keys (the config file, the service
    // scripts' settings): one of those would be set in vain, so each variable must land on a key.
    let effective = toml::Value::try_from(&config)
        .map_err(|e| format!("its configuration does not serialise: {e}"))?;
    for key in env.keys() {
        let path = key
            .strip_prefix("FLEETPULSE_")
            .unwrap_or(key)
            .to_lowercase();
        let found = path
            .split("__")
            .try_fold(&effective, |value, segment| value.get(segment));
        if found.is_none() {
            return Err(format!(
                "{key} sets no key of the effective configuration (`{}`)",
                path.replace("__", ".")
            ));
        }
    }
    if kind != "registry" {
        config
            .brokers()
            .map_err(|e| format!("{kind} needs Kafka: {e}"))?;
    }
    if kind == "bridge" {
        config.bridge.validate().map_err(|(key, expected)| {
            format!("configuration key `bridge.{key}`: expected {expected}")
        })?;
    }
    Ok(Loaded {
        name: name.to_string(),
        kind,
        env,
        cli,
        config,
    })
}

/// The files scripts/compose-secrets.sh made for a compose file that has secrets, as the
/// containers would see them.
#[derive(Default)]
struct Secrets {
    /// Where they are (kept while the checks run).
    dir: Option<tempfile::TempDir>,
    /// Each secret of the compose file: the file made for it.
    files: BTreeMap<String, PathBuf>,
}

impl Secrets {
    /// Runs the one-off step into a temp dir when `compose` has secrets.
    fn made_for(compose: &Compose) -> Result<Secrets, String> {
        if compose.secrets.is_empty() {
            return Ok(Secrets::default());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let made = std::process::Command::new("bash")
            .arg(root().join("scripts/compose-secrets.sh"))
            .arg(dir.path().join("secrets"))
            .output()
            .map_err(|e| format!("cannot run scripts/compose-secrets.sh: {e}"))?;
        if !made.status.success() {
            return Err(format!(
                "scripts/compose-secrets.sh failed: {}",
                String::from_utf8_lossy(&made.stderr)
            ));
        }
        let mut secrets = Secrets {
            dir: Some(dir),
            files: BTreeMap::new(),
        };
        for (name, secret) in &compose.secrets {
            let file = secret
                .file
                .as_deref()
                .ok_or(format!("secret {name} is not a file"))?;
            let local = secrets.local(file).ok_or(format!(
                "secret {name} is {file}, not a file of ./secrets that compose-secrets.sh makes"
            ))?;
            if !local.is_file() {
                return Err(format!(
                    "secret {name} is {file}, which compose-secrets.sh does not make"
                ));
            }
            secrets.files.insert(name.clone(), local);
        }
        Ok(secrets)
    }

    /// A host path of the compose file under ./secrets, as made here.
    fn local(&self, path: &str) -> Option<PathBuf> {
        let rest = path.strip_prefix("./secrets/")?;
        Some(self.dir.as_ref()?.path().join("secrets").join(rest))
    }

    /// Each path in `service`'s container that holds something compose-secrets.sh made: its
    /// secrets and its binds of ./secrets.
    fn mounted(&self, service: &Service) -> BTreeMap<String, PathBuf> {
        let mut mounted = BTreeMap::new();
        for secret in &service.secrets {
            let (name, path) = secret.mount();
            if let Some(file) = self.files.get(&name) {
                mounted.insert(path, file.clone());
            }
        }
        for mount in &service.volumes {
            if let Some((source, target)) = mount.bind()
                && let Some(local) = self.local(&source)
            {
                mounted.insert(target, local);
            }
        }
        mounted
    }

    /// The file made here that `service` sees at `path` in its container.
    fn seen_at(&self, service: &Service, path: &str) -> Option<PathBuf> {
        self.mounted(service).into_iter().find_map(|(at, local)| {
            if path == at {
                Some(local)
            } else {
                let rest = path.strip_prefix(&format!("{at}/"))?;
                Some(local.join(rest))
            }
        })
    }

    /// `value` with each path under /run/secrets replaced by the file made for it; a path of a
    /// secret `service` does not mount is an error (the container would not find it).
    fn resolve(&self, value: &str, service: &Service) -> Result<String, String> {
        const AT: &str = "/run/secrets/";
        let mounted = self.mounted(service);
        let mut out = String::new();
        let mut rest = value;
        while let Some(start) = rest.find(AT) {
            out.push_str(&rest[..start]);
            let tail = &rest[start..];
            let end = tail[AT.len()..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
                .map_or(tail.len(), |i| i + AT.len());
            let path = &tail[..end];
            let file = mounted
                .get(path)
                .ok_or(format!("names {path}, a secret the service does not mount"))?;
            out.push_str(&file.to_string_lossy());
            rest = &tail[end..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The compose file, parsed, and its fleetpulse services, loaded.
struct Stack {
    file: &'static str,
    secrets: Secrets,
    compose: Compose,
    /// The services that load.
    loaded: Vec<Loaded>,
    /// Why the others do not.
    failures: Vec<String>,
}

impl Stack {
    fn read(file: &'static str) -> Stack {
        let text = std::fs::read_to_string(root().join(file))
            .unwrap_or_else(|e| panic!("read {file} at the repository root: {e}"));
        // Merge keys (`<<: *anchor`) are left unexpanded by the YAML parser here: keys merged in
        // would escape every check below.
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("<<:")),
            "{file} uses a YAML merge key; write the keys out (a plain *alias is fine)"
        );
        let compose: Compose = serde_norway::from_str(&text)
            .unwrap_or_else(|e| panic!("{file} is not a compose file: {e}"));
        let secrets = Secrets::made_for(&compose).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut loaded = Vec::new();
        let mut failures = Vec::new();
        for (name, service) in &compose.services {
            if service.is_fleetpulse() {
                match load_service(name, service, &secrets) {
                    Ok(service) => loaded.push(service),
                    Err(why) => failures.push(format!("service {name}: {why}")),
                }
            }
        }
        Stack {
            file,
            secrets,
            compose,
            loaded,
            failures,
        }
    }

    fn service(&self, name: &str) -> &Service {
        &self.compose.services[name]
    }

    fn named_volumes(&self) -> BTreeSet<String> {
        self.compose.volumes.keys().cloned().collect()
    }

    /// The fleetpulse services that load; panics when none does, so no check passes vacuously.
    fn loaded(&self) -> &[Loaded] {
        assert!(
            !self.loaded.is_empty(),
            "no fleetpulse service of {} loads:\n{}",
            self.file,
            self.failures.join("\n")
        );
        &self.loaded
    }
}

fn report(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n  {}", problems.join("\n  "));
}

#[test]
fn every_fleetpulse_service_starts_from_its_variables_alone() {
    for file in FILES {
        let stack = Stack::read(file);
        let mut problems = stack.failures.clone();
        let kinds: BTreeSet<&str> = stack.loaded.iter().map(|l| l.kind).collect();
        for wanted in ["pipeline", "sink", "bridge", "registry", "generate"] {
            if !kinds.contains(wanted) {
                problems.push(format!("no service runs `fleetpulse {wanted}` (and loads)"));
            }
        }
        let volumes = stack.named_volumes();
        for (name, service) in &stack.compose.services {
            if !service.is_fleetpulse() {
                continue;
            }
            match &service.build {
                Some(Build::Full {
                    context,
                    dockerfile,
                }) if context.as_deref() == Some(".")
                    && dockerfile.as_deref().unwrap_or("Dockerfile") == "Dockerfile" => {}
                Some(Build::Context(context)) if context == "." => {}
                other => problems.push(format!(
                    "service {name}: builds {other:?}, not the repository's Dockerfile"
                )),
            }
            if service.restart.as_deref() != Some("unless-stopped") {
                problems.push(format!("service {name}: restart is not unless-stopped"));
            }
        }
        for l in stack.loaded() {
            let service = stack.service(&l.name);
            let on_volume = |path: &Path| {
                service
                    .volumes
                    .iter()
                    .filter_map(|m| m.named_volume(&volumes))
                    .any(|(_, target)| path.starts_with(target.as_str()))
            };
            if l.kind == "pipeline" {
                match &l.config.pipeline.checkpoint_dir {
                Some(dir) if on_volume(dir.as_path()) => {}
                Some(dir) => problems.push(format!(
                    "service {}: checkpoints in {} are not on a named volume and die with the container",
                    l.name,
                    dir.display()
                )),
                None => problems.push(format!(
                    "service {}: no pipeline.checkpoint_dir, so a restart starts over",
                    l.name
                )),
            }
            }
            if l.kind == "registry"
                && let Some(file) = &l.config.registry.state_file
                && !on_volume(file.as_path())
            {
                problems.push(format!(
                    "service {}: registry.state_file {} is not on a named volume",
                    l.name,
                    file.display()
                ));
            }
            if l.kind == "generate" && !service.profiles.iter().any(|p| p == "demo") {
                problems.push(format!(
                "service {}: a synthetic fleet belongs in the demo profile, not in every `compose up`",
                l.name
            ));
            }
            if l.kind != "generate" && !service.profiles.is_empty() {
                problems.push(format!(
                    "service {}: runs only under profiles {:?}",
                    l.name, service.profiles
                ));
            }
        }
        report(&format!("{file}'s fleetpulse services"), &problems);
    }
}

#[test]
fn ports_and_health_checks_follow_the_listen_addresses() {
    for file in FILES {
        let stack = Stack::read(file);
        let runtime = runtime_stage();
        let mut problems = Vec::new();
        for l in stack.loaded() {
            let service = stack.service(&l.name);
            let name = &l.name;
            let Some((key, listen, default)) = listener(&l.cli.command, &l.config) else {
                if !service.ports.is_empty() {
                    problems.push(format!("service {name}: publishes ports but serves none"));
                }
                continue;
            };
            if !listen.ip().is_unspecified() {
                problems.push(format!(
                "service {name}: {key} is {listen}; inside a container it must be 0.0.0.0 to be reachable"
            ));
            }
            if listen.port() != default.port() {
                problems.push(format!(
                    "service {name}: {key} port {} differs from the default {}",
                    listen.port(),
                    default.port()
                ));
            }
            for port in &service.ports {
                match port.mapping() {
                    Ok((host, container)) => {
                        if container != listen.port() {
                            problems.push(format!(
                            "service {name}: publishes container port {container}, but {key} is {listen}"
                        ));
                        }
                        if host.is_some_and(|h| h != container) {
                            problems.push(format!(
                            "service {name}: publishes {container} as {host:?}; keep the default port on the host too"
                        ));
                        }
                    }
                    Err(e) => problems.push(format!("service {name}: {e}")),
                }
            }
            let Some(words) = service.healthcheck.as_ref().and_then(Healthcheck::words) else {
                problems.push(format!("service {name}: no health check"));
                continue;
            };
            let urls: Vec<&String> = words
                .iter()
                .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
                .collect();
            let tls = serves_tls(&l.cli.command, &l.config);
            if let [url] = urls.as_slice()
                && url.starts_with("https://") != tls
            {
                problems.push(format!(
                    "service {name}: health check asks {url}, but the service serves {}",
                    if tls { "HTTPS" } else { "plain HTTP" }
                ));
            }
            match urls.as_slice() {
            [url] => match address(url) {
                Some((host, port, path)) => {
                    // A certificate names localhost, not 127.0.0.1: an HTTPS check asks the name.
                    if !["127.0.0.1", "localhost"].contains(&host.as_str()) {
                        problems.push(format!(
                            "service {name}: health check asks {host}, not the container itself"
                        ));
                    }
                    if port != listen.port() {
                        problems.push(format!(
                            "service {name}: health check asks port {port}, but {key} is {listen}"
                        ));
                    }
                    if !["/healthz", "/readyz"].contains(&path.as_str()) {
                        problems.push(format!(
                            "service {name}: health check asks {path}, not /healthz or /readyz"
                        ));
                    }
                }
                None => problems.push(format!(
                    "service {name}: health check URL {url} has no port"
                )),
            },
            _ => problems.push(format!(
                "service {name}: health check {words:?} does not ask one http:// or https:// URL"
            )),
        }
            if let Some(program) = words.first()
                && !runtime.installs(program)
            {
                problems.push(format!(
                "service {name}: health check runs {program}, which the Dockerfile's runtime stage does not install"
            ));
            }
        }
        report(
            &format!("{file}'s listen addresses, ports and health checks"),
            &problems,
        );
    }
}

#[test]
fn topics_and_addresses_agree_across_the_stack() {
    for file in FILES {
        let stack = Stack::read(file);
        let mut problems = Vec::new();
        let registries: Vec<&Loaded> = stack
            .loaded()
            .iter()
            .filter(|l| l.kind == "registry")
            .collect();
        let mut registry_urls = BTreeSet::new();
        for l in stack.loaded() {
            let name = &l.name;
            if l.config.topics != Topics::default() {
                problems.push(format!(
                    "service {name}: topics {:?} differ from the defaults {:?}",
                    l.config.topics,
                    Topics::default()
                ));
            }
            // Each address it is given: the variable, the address, and what it must name.
            let mut targets: Vec<(&str, String, Target)> = Vec::new();
            if l.kind != "registry"
                && let Ok(brokers) = l.config.brokers()
            {
                for broker in brokers.as_str().split(',') {
                    targets.push(("kafka.brokers", broker.trim().to_string(), Target::Kafka));
                }
            }
            if l.kind != "registry" {
                let url = l.config.schema_registry.as_ref().map(|r| r.url.to_string());
                registry_urls.insert(url.clone());
                if let Some(url) = url {
                    targets.push(("schema_registry.url", url, Target::Registry));
                }
            }
            if l.kind == "sink" {
                let url = l.config.clickhouse.url.clone();
                let https = url.starts_with("https://");
                targets.push(("clickhouse.url", url, Target::ClickHouse { https }));
            }
            if l.kind == "bridge" {
                // Read from the variable: the key is checked by the load above.
                match l.env.get("FLEETPULSE_BRIDGE__REDIS_URL") {
                Some(url) => {
                    let tls = url.starts_with("rediss://");
                    targets.push(("bridge.redis_url", url.clone(), Target::Redis { tls }));
                }
                None => problems.push(format!(
                    "service {name}: no FLEETPULSE_BRIDGE__REDIS_URL; bridges share device status through Redis"
                )),
            }
            }
            let depends = stack.service(name).depends_on.conditions();
            for (key, text, target) in targets {
                let Some((host, port, _)) = address(&text) else {
                    problems.push(format!("service {name}: {key} {text:?} has no host:port"));
                    continue;
                };
                let Some(service) = stack.compose.services.get(&host) else {
                    problems.push(format!(
                        "service {name}: {key} names {host}, which is no service of the file"
                    ));
                    continue;
                };
                match target.port(service, &host, &registries) {
                    Ok(ports) if ports.contains(&port) => {}
                    Ok(ports) => problems.push(format!(
                        "service {name}: {key} asks {host} on port {port}, which serves {ports:?}"
                    )),
                    Err(why) => problems.push(format!("service {name}: {key} names {host}: {why}")),
                }
                if depends.get(&host).map(String::as_str) != Some("service_healthy") {
                    problems.push(format!(
                    "service {name}: uses {host} ({key}) without waiting for it (depends_on condition service_healthy)"
                ));
                }
            }
            // With a password file the sink's login is checked against ClickHouse's users file, in
            // the secrets test; with variables, against the image's.
            if l.kind == "sink" && l.config.clickhouse.password_file.is_none() {
                let clickhouse = address(&l.config.clickhouse.url)
                    .and_then(|(host, _, _)| stack.compose.services.get(&host));
                if let Some(clickhouse) = clickhouse {
                    let user = clickhouse
                        .environment
                        .raw("CLICKHOUSE_USER")
                        .unwrap_or_else(|| "default".into());
                    if l.config.clickhouse.user != user {
                        problems.push(format!(
                        "service {name}: clickhouse.user is {:?}, ClickHouse's user is {user:?}",
                        l.config.clickhouse.user
                    ));
                    }
                    let theirs = clickhouse.environment.raw("CLICKHOUSE_PASSWORD");
                    let ours = stack
                        .service(name)
                        .environment
                        .raw("FLEETPULSE_CLICKHOUSE__PASSWORD");
                    if theirs != ours {
                        problems.push(format!(
                        "service {name}: FLEETPULSE_CLICKHOUSE__PASSWORD {ours:?} is not ClickHouse's CLICKHOUSE_PASSWORD {theirs:?}"
                    ));
                    }
                }
            }
        }
        if registry_urls.len() > 1 {
            problems.push(format!(
            "the services disagree on the schema registry ({registry_urls:?}): ids written by one would be unknown to another"
        ));
        }
        report(&format!("{file}'s topics and addresses"), &problems);
    }
}

/// What an address given to a fleetpulse service must point at.
enum Target {
    Kafka,
    Registry,
    ClickHouse { https: bool },
    Redis { tls: bool },
}

/// The word after `flag` in `service`'s command.
fn flag_value(service: &Service, flag: &str) -> Option<String> {
    let args = service
        .command
        .as_ref()
        .map(Words::list)
        .unwrap_or_default();
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).cloned()
}

/// The text of the first `<tag>` element of an XML text.
fn xml_value<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(text[start..end].trim())
}

impl Target {
    /// The ports `service` (called `host`) serves this on.
    fn port(
        &self,
        service: &Service,
        host: &str,
        registries: &[&Loaded],
    ) -> Result<Vec<u16>, String> {
        match self {
            // Clients are sent to the advertised address after bootstrapping: the one given
            // must be one of those, or they would bootstrap and then lose the broker.
            Target::Kafka => {
                let advertised = service
                    .environment
                    .raw("KAFKA_ADVERTISED_LISTENERS")
                    .ok_or("no KAFKA_ADVERTISED_LISTENERS")?;
                let advertised = interpolate(&advertised)?;
                Ok(advertised
                    .split(',')
                    .filter_map(address)
                    .filter(|(h, _, _)| h == host)
                    .map(|(_, port, _)| port)
                    .collect())
            }
            Target::Registry => {
                let registry = registries
                    .iter()
                    .find(|l| l.name == host)
                    .ok_or("not a service running `fleetpulse registry` that loads")?;
                Ok(vec![registry.config.registry.listen.port()])
            }
            Target::ClickHouse { https } => {
                if !service.image_starts_with("clickhouse/") {
                    return Err(format!("its image is {:?}, not ClickHouse", service.image));
                }
                // The image's HTTP port (the default of clickhouse.url) and HTTPS port as the
                // configuration files mounted into its config.d leave them.
                let mut http = address(&Config::default().clickhouse.url)
                    .map(|a| a.1)
                    .into_iter()
                    .collect::<Vec<u16>>();
                let mut tls = Vec::new();
                for mount in &service.volumes {
                    let Some((source, target)) = mount.bind() else {
                        continue;
                    };
                    if !target.starts_with("/etc/clickhouse-server/config.d/") {
                        continue;
                    }
                    let text = std::fs::read_to_string(root().join(&source))
                        .map_err(|e| format!("its config file {source}: {e}"))?;
                    if text.contains("<http_port remove=") {
                        http.clear();
                    }
                    if let Some(port) = xml_value(&text, "https_port") {
                        tls.push(port.parse().map_err(|_| "its https_port is not a number")?);
                    }
                }
                Ok(if *https { tls } else { http })
            }
            Target::Redis { tls } => {
                if !service.image_starts_with("redis") {
                    return Err(format!("its image is {:?}, not Redis", service.image));
                }
                let (flag, default) = if *tls {
                    ("--tls-port", 0)
                } else {
                    ("--port", 6379)
                };
                let port = flag_value(service, flag)
                    .map_or(Ok(default), |p| p.parse::<u16>())
                    .map_err(|_| format!("its {flag} is not a number"))?;
                // Port 0 turns the listener off.
                Ok([port].into_iter().filter(|p| *p != 0).collect())
            }
        }
    }
}

#[test]
fn dependencies_wait_for_health_and_data_lives_on_volumes() {
    for file in FILES {
        let stack = Stack::read(file);
        let volumes = stack.named_volumes();
        let mut used = BTreeSet::new();
        let mut problems = Vec::new();
        for (name, service) in &stack.compose.services {
            for mount in &service.volumes {
                if let Some((volume, _)) = mount.named_volume(&volumes) {
                    used.insert(volume);
                }
            }
            for (dependency, condition) in service.depends_on.conditions() {
                let Some(target) = stack.compose.services.get(&dependency) else {
                    problems.push(format!(
                        "service {name}: depends on {dependency}, which is no service"
                    ));
                    continue;
                };
                if condition != "service_healthy" {
                    problems.push(format!(
                        "service {name}: waits for {dependency} to be {condition}, not healthy"
                    ));
                }
                if target
                    .healthcheck
                    .as_ref()
                    .and_then(Healthcheck::words)
                    .is_none()
                {
                    problems.push(format!(
                        "service {name}: waits for {dependency}, which has no health check"
                    ));
                }
                if service.profiles.is_empty() && !target.profiles.is_empty() {
                    problems.push(format!(
                    "service {name}: always runs but depends on {dependency}, which runs only under profiles {:?}",
                    target.profiles
                ));
                }
            }
            if service.is_fleetpulse() {
                continue;
            }
            if service
                .healthcheck
                .as_ref()
                .and_then(Healthcheck::words)
                .is_none()
            {
                problems.push(format!("service {name}: no health check"));
            }
            if service.restart.as_deref() != Some("unless-stopped") {
                problems.push(format!("service {name}: restart is not unless-stopped"));
            }
            if !service
                .volumes
                .iter()
                .any(|m| m.named_volume(&volumes).is_some())
            {
                problems.push(format!(
                    "service {name}: keeps its data in the container, not on a named volume"
                ));
            }
        }
        if let Some(kafka) = stack
            .compose
            .services
            .values()
            .find(|s| s.image_starts_with("apache/kafka"))
        {
            let log_dirs = kafka.environment.raw("KAFKA_LOG_DIRS").unwrap_or_default();
            let on_volume = kafka
                .volumes
                .iter()
                .filter_map(|m| m.named_volume(&volumes))
                .any(|(_, target)| target == log_dirs);
            if !on_volume {
                problems.push(format!(
                    "Kafka's KAFKA_LOG_DIRS {log_dirs:?} is not a named volume's mount point"
                ));
            }
        } else {
            problems.push("no apache/kafka service".into());
        }
        for unused in volumes.difference(&used) {
            problems.push(format!("volume {unused} is declared but mounted nowhere"));
        }
        report(&format!("{file}'s dependencies and volumes"), &problems);
    }
}

/// The SHA-256 of `text` in hex: how ClickHouse's users file and Redis's ACL hold a password.
fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let mut openssl = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl runs (scripts/services.sh install build)");
    openssl
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = openssl.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Runs openssl with `args`; whether it succeeded, and what it said.
fn openssl(args: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl runs (scripts/services.sh install build)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_secured_stack_has_every_secret_it_names_and_its_logins_agree() {
    let mut checked = 0;
    for file in FILES {
        let stack = Stack::read(file);
        if stack.compose.secrets.is_empty() {
            continue;
        }
        checked += 1;
        let mut problems = stack.failures.clone();
        let secrets = &stack.secrets;

        // Every secret a service names is one it mounts and the one-off step makes.
        for (name, service) in &stack.compose.services {
            let mut texts: Vec<String> = service
                .environment
                .entries()
                .into_iter()
                .filter_map(|(_, v)| v)
                .collect();
            texts.extend(
                service
                    .command
                    .as_ref()
                    .map(Words::list)
                    .unwrap_or_default(),
            );
            texts.extend(
                service
                    .healthcheck
                    .as_ref()
                    .and_then(Healthcheck::words)
                    .unwrap_or_default(),
            );
            for text in texts {
                if let Err(e) = secrets.resolve(&text, service) {
                    problems.push(format!("service {name}: {e}"));
                }
            }
            for secret in &service.secrets {
                let (secret, _) = secret.mount();
                if !stack.compose.secrets.contains_key(&secret) {
                    problems.push(format!(
                        "service {name}: mounts secret {secret}, which the file does not declare"
                    ));
                }
            }
            for mount in &service.volumes {
                if let Some((source, _)) = mount.bind()
                    && !root().join(&source).exists()
                    && !secrets.local(&source).is_some_and(|l| l.exists())
                {
                    problems.push(format!(
                        "service {name}: binds {source}, which neither the repository nor compose-secrets.sh has"
                    ));
                }
            }
        }

        // The certificate verifies, against the CA clients are given, for every name a client
        // reaches a TLS server by: the services that are not fleetpulse's, the fleetpulse
        // services that serve TLS, and the host's localhost.
        let tls_servers: Vec<&str> = stack
            .compose
            .services
            .iter()
            .filter(|(name, service)| {
                !service.is_fleetpulse()
                    || stack
                        .loaded
                        .iter()
                        .any(|l| &l.name == *name && serves_tls(&l.cli.command, &l.config))
            })
            .map(|(name, _)| name.as_str())
            .collect();
        match (secrets.files.get("ca"), secrets.files.get("server-cert")) {
            (Some(ca), Some(cert)) => {
                for host in tls_servers.into_iter().chain(["localhost"]) {
                    let (ok, said) = openssl(&[
                        "verify".as_ref(),
                        "-CAfile".as_ref(),
                        ca.as_os_str(),
                        "-verify_hostname".as_ref(),
                        host.as_ref(),
                        cert.as_os_str(),
                    ]);
                    if !ok {
                        problems.push(format!(
                            "the server certificate does not verify for {host}: {said}"
                        ));
                    }
                }
            }
            _ => problems.push("no secrets named ca and server-cert".into()),
        }

        let fleetpulse = stack.loaded();
        let image = |prefix: &str| {
            stack
                .compose
                .services
                .values()
                .find(|s| s.image_starts_with(prefix))
        };

        // Kafka: the broker's key store opens with its password, and its PLAIN users are the
        // ones the services log in as.
        if let Some(kafka) = image("apache/kafka") {
            let env = |key: &str| kafka.environment.raw(key).unwrap_or_default();
            let in_secrets =
                |name: String| secrets.seen_at(kafka, &format!("/etc/kafka/secrets/{name}"));
            let store = in_secrets(env("KAFKA_SSL_KEYSTORE_FILENAME"));
            let password = in_secrets(env("KAFKA_SSL_KEYSTORE_CREDENTIALS"));
            match (store, password) {
                (Some(store), Some(password)) => {
                    let mut pass = std::ffi::OsString::from("file:");
                    pass.push(&password);
                    let (ok, said) = openssl(&[
                        "pkcs12".as_ref(),
                        "-in".as_ref(),
                        store.as_os_str(),
                        "-passin".as_ref(),
                        &pass,
                        "-noout".as_ref(),
                    ]);
                    if !ok {
                        problems.push(format!("Kafka's key store does not open with its password: {said}"));
                    }
                }
                _ => problems.push(
                    "Kafka's KAFKA_SSL_KEYSTORE_FILENAME or KAFKA_SSL_KEYSTORE_CREDENTIALS is not in its /etc/kafka/secrets".into(),
                ),
            }
            if in_secrets(env("KAFKA_SSL_KEY_CREDENTIALS")).is_none_or(|f| !f.is_file()) {
                problems.push(
                    "Kafka's KAFKA_SSL_KEY_CREDENTIALS is not in its /etc/kafka/secrets".into(),
                );
            }
            let jaas = env("KAFKA_OPTS")
                .split_whitespace()
                .find_map(|o| o.strip_prefix("-Djava.security.auth.login.config="))
                .and_then(|path| secrets.seen_at(kafka, path))
                .and_then(|path| std::fs::read_to_string(path).ok());
            match jaas {
                Some(jaas) => {
                    for l in fleetpulse.iter().filter(|l| l.kind != "registry") {
                        let p = &l.config.kafka.properties;
                        let login = format!(
                            "user_{}=\"{}\"",
                            p.get("sasl.username").map_or("", String::as_str),
                            p.get("sasl.password").map_or("", String::as_str)
                        );
                        if !jaas.contains(&login) {
                            problems.push(format!(
                                "service {}: its Kafka user and password are not a PLAIN user of the broker's login file",
                                l.name
                            ));
                        }
                    }
                }
                None => {
                    problems.push("Kafka's KAFKA_OPTS names no login file that is mounted".into())
                }
            }
        }

        // ClickHouse: the sink's user and password are the users file's.
        if let Some(clickhouse) = image("clickhouse/") {
            let users: String = clickhouse
                .volumes
                .iter()
                .filter_map(Mount::bind)
                .filter(|(_, target)| target.starts_with("/etc/clickhouse-server/users.d/"))
                .filter_map(|(_, target)| secrets.seen_at(clickhouse, &target))
                .filter_map(|f| std::fs::read_to_string(f).ok())
                .collect();
            for l in fleetpulse.iter().filter(|l| l.kind == "sink") {
                let c = &l.config.clickhouse;
                let hash = format!(
                    "<password_sha256_hex>{}</password_sha256_hex>",
                    sha256_hex(&c.password)
                );
                if !users.contains(&format!("<{}>", c.user)) || !users.contains(&hash) {
                    problems.push(format!(
                        "service {}: ClickHouse's users file has no user {} with its password",
                        l.name, c.user
                    ));
                }
            }
        }

        // Redis: the bridge's user and password are an ACL user's; `default` is off.
        if let Some(redis) = image("redis") {
            let acl = flag_value(redis, "--aclfile")
                .and_then(|path| secrets.seen_at(redis, &path))
                .and_then(|f| std::fs::read_to_string(f).ok())
                .unwrap_or_default();
            if !acl.lines().any(|l| l.trim() == "user default off") {
                problems.push("Redis's ACL leaves the password-less default user on".into());
            }
            for l in fleetpulse.iter().filter(|l| l.kind == "bridge") {
                let url = &l.config.bridge.redis_url;
                let user = url
                    .split_once("://")
                    .and_then(|(_, rest)| rest.split_once('@'))
                    .map_or("default", |(user, _)| {
                        user.split(':').next().unwrap_or(user)
                    });
                let entry = format!(
                    "user {user} on #{}",
                    sha256_hex(&l.config.bridge.redis_password)
                );
                if !acl.lines().any(|line| line.starts_with(&entry)) {
                    problems.push(format!(
                        "service {}: Redis's ACL has no user {user} with its password",
                        l.name
                    ));
                }
            }
        }

        // The registry: every service registers its schemas, so each holds the write token.
        let tokens: BTreeSet<&str> = fleetpulse
            .iter()
            .filter_map(|l| l.config.registry.write_token.as_deref())
            .collect();
        for l in fleetpulse.iter().filter(|l| l.kind != "registry") {
            let token = l
                .config
                .schema_registry
                .as_ref()
                .and_then(|r| r.token.as_deref());
            if !tokens.is_empty() && !token.is_some_and(|t| tokens.contains(t)) {
                problems.push(format!(
                    "service {}: registers schemas without the registry's write token",
                    l.name
                ));
            }
        }
        report(&format!("{file}'s secrets and logins"), &problems);
    }
    assert!(checked > 0, "no compose file with secrets was checked");
}

/// One stage of a Dockerfile: its base, its name, and its instructions (keyword, arguments).
#[derive(Debug)]
struct Stage {
    from: String,
    name: Option<String>,
    instructions: Vec<(String, String)>,
}

impl Stage {
    fn runs(&self) -> impl Iterator<Item = &str> {
        self.instructions
            .iter()
            .filter(|(word, _)| word == "RUN")
            .map(|(_, rest)| rest.as_str())
    }

    /// Whether a RUN of this stage names `program` (as a package to install).
    fn installs(&self, program: &str) -> bool {
        self.runs().any(|run| {
            run.contains("apt-get install") && run.split_whitespace().any(|w| w == program)
        })
    }
}

/// The Dockerfile's stages, with continuation lines joined and comments dropped (as Docker
/// drops them, even inside a continued instruction).
fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(continued) => {
                current.push_str(continued);
                current.push(' ');
            }
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.trim().is_empty() {
        instructions.push(current);
    }
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in instructions {
        let (word, rest) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((instruction.as_str(), ""));
        let (word, rest) = (word.to_ascii_uppercase(), rest.trim().to_string());
        if word == "FROM" {
            let parts: Vec<&str> = rest
                .split_whitespace()
                .filter(|p| !p.starts_with("--"))
                .collect();
            let name = match parts.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            stages.push(Stage {
                from: parts.first().map(|p| p.to_string()).unwrap_or_default(),
                name,
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((word, rest));
        }
    }
    stages
}

fn read_dockerfile() -> Vec<Stage> {
    let text = std::fs::read_to_string(root().join("Dockerfile"))
        .expect("read the Dockerfile at the repository root");
    dockerfile_stages(&text)
}

/// The stage the image is made of: the last one.
fn runtime_stage() -> Stage {
    read_dockerfile().pop().expect("the Dockerfile has a FROM")
}

#[test]
fn the_dockerfile_builds_the_locked_package_and_ships_the_binary() {
    let stages = read_dockerfile();
    let mut problems = Vec::new();
    assert!(
        stages.len() >= 2,
        "the Dockerfile should build in one stage and run in another: {stages:?}"
    );
    let (runtime, builders) = stages.split_last().expect("two stages");

    // The build: `cargo build --release --locked -p fleetpulse` in a Rust image.
    let builds: Vec<(usize, &Stage, &str)> = builders
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.runs()
                .filter(|r| r.contains("cargo build"))
                .map(move |r| (i, s, r))
        })
        .collect();
    let [(index, builder, run)] = builds.as_slice() else {
        panic!("the Dockerfile should run `cargo build` once, in a build stage: {builds:?}");
    };
    let words: Vec<&str> = run.split_whitespace().collect();
    let has = |flag: &str| words.contains(&flag);
    if !has("--release") {
        problems.push(format!("the build is not --release: {run}"));
    }
    if !has("--locked") {
        problems.push(format!(
            "the build is not --locked, so Cargo.lock may be ignored: {run}"
        ));
    }
    let package = words
        .windows(2)
        .any(|w| matches!(w, ["-p", "fleetpulse"] | ["--package", "fleetpulse"]))
        || words.contains(&"--package=fleetpulse");
    if !package {
        problems.push(format!(
            "the build does not select the fleetpulse package: {run}"
        ));
    }
    if !builder.from.starts_with("rust:") {
        problems.push(format!(
            "the build stage starts from {}, not a rust: image",
            builder.from
        ));
    }
    // Cache mounts are not part of the stage's file system: the binary must be copied out of
    // them in the same RUN, and the runtime stage must copy it from elsewhere.
    let caches: Vec<&str> = words
        .iter()
        .filter(|w| w.starts_with("--mount=") && w.contains("type=cache"))
        .filter_map(|w| {
            w.trim_start_matches("--mount=")
                .split(',')
                .find_map(|field| {
                    let (k, v) = field.split_once('=')?;
                    ["target", "dst", "destination"].contains(&k).then_some(v)
                })
        })
        .collect();

    // The runtime: the binary copied from the build stage to /usr/local/bin/fleetpulse.
    let builder_refs = [Some(index.to_string()), builder.name.clone()];
    let copies: Vec<&str> = runtime
        .instructions
        .iter()
        .filter(|(word, rest)| {
            word == "COPY"
                && rest.split_whitespace().any(|w| {
                    w.strip_prefix("--from=")
                        .is_some_and(|from| builder_refs.contains(&Some(from.to_string())))
                })
        })
        .map(|(_, rest)| rest.as_str())
        .collect();
    let shipped = copies.iter().find_map(|rest| {
        let paths: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        let (destination, sources) = paths.split_last()?;
        let to_binary = *destination == "/usr/local/bin/fleetpulse"
            || (destination.trim_end_matches('/') == "/usr/local/bin"
                && sources.iter().any(|s| s.ends_with("/fleetpulse")));
        to_binary.then_some(sources.to_vec())
    });
    match shipped {
        Some(sources) => {
            for source in sources {
                if caches.iter().any(|c| Path::new(source).starts_with(c)) {
                    problems.push(format!(
                        "the runtime stage copies {source} from a cache mount, which the build stage's image does not hold"
                    ));
                }
            }
        }
        None => problems.push(format!(
            "the runtime stage does not copy the binary from the build stage to /usr/local/bin/fleetpulse: {copies:?}"
        )),
    }
    if runtime.from.starts_with("rust:") {
        problems.push(format!(
            "the runtime stage is the whole toolchain image {}",
            runtime.from
        ));
    }
    let entrypoint = runtime
        .instructions
        .iter()
        .rev()
        .find(|(word, _)| word == "ENTRYPOINT")
        .and_then(|(_, rest)| serde_json::from_str::<Vec<String>>(rest).ok());
    match entrypoint.as_deref() {
        Some([program]) if program == "fleetpulse" || program == "/usr/local/bin/fleetpulse" => {}
        other => problems.push(format!(
            "the entrypoint should be [\"fleetpulse\"] in exec form, for compose's commands to be its subcommands; it is {other:?}"
        )),
    }
    let user = runtime
        .instructions
        .iter()
        .rev()
        .find(|(word, _)| word == "USER")
        .map(|(_, rest)| rest.clone());
    let root_user = |u: &str| {
        let name = u.split(':').next().unwrap_or(u);
        name == "root" || name == "0"
    };
    if user.as_deref().is_none_or(root_user) {
        problems.push(format!("the runtime stage runs as root (USER {user:?})"));
    }
    if !runtime.installs("ca-certificates") {
        problems.push("the runtime stage does not install ca-certificates".into());
    }
    report("the Dockerfile", &problems);
}

/// `(name, value)` pairs as an environment.
fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A fleetpulse service with this command and these variables.
fn service_with(command: &[&str], pairs: &[(&str, &str)]) -> Service {
    Service {
        build: Some(Build::Context(".".into())),
        command: Some(Words::Many(command.iter().map(|c| c.to_string()).collect())),
        environment: Environment::Map(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect(),
        ),
        ..Service::default()
    }
}

/// The checks above would catch the mistakes they are there for: this runs them on broken
/// inputs.
#[test]
fn the_checks_catch_a_misspelt_key_a_bad_value_and_a_wrong_command() {
    let misspelt = load_config(&vars(&[("FLEETPULSE_PIPELINE__LISTN", "0.0.0.0:9464")]))
        .expect_err("an unknown key fails the load");
    assert!(misspelt.contains("pipeline.listn"), "{misspelt}");
    let portless = load_config(&vars(&[("FLEETPULSE_PIPELINE__LISTEN", "0.0.0.0")]))
        .expect_err("an address without a port fails the load");
    assert!(portless.contains("pipeline.listen"), "{portless}");
    let fine = load_config(&vars(&[("FLEETPULSE_PIPELINE__LISTEN", "0.0.0.0:9464")]))
        .expect("a good variable loads");
    assert_eq!(fine.pipeline.listen.port(), 9464);

    let brokers = ("FLEETPULSE_KAFKA__BROKERS", "kafka:9092");
    let none = Secrets::default();
    if let Err(e) = load_service("ok", &service_with(&["pipeline"], &[brokers]), &none) {
        panic!("a pipeline given its brokers should load: {e}");
    }
    let broken = [
        (
            "a misspelt subcommand",
            service_with(&["sink", "clikhouse"], &[brokers]),
        ),
        ("a flag", service_with(&["pipeline", "-w", "2"], &[brokers])),
        ("no service", service_with(&["config"], &[brokers])),
        ("no brokers", service_with(&["pipeline"], &[])),
        // The loader skips FLEETPULSE_CACHE: set in a service, it would do nothing.
        (
            "a variable that is no key",
            service_with(&["pipeline"], &[brokers, ("FLEETPULSE_CACHE", "/tmp")]),
        ),
        (
            "a short secret",
            service_with(
                &["bridge"],
                &[brokers, ("FLEETPULSE_BRIDGE__JWT_SECRET", "short")],
            ),
        ),
        (
            "a bare ${VAR}",
            service_with(
                &["pipeline"],
                &[("FLEETPULSE_KAFKA__BROKERS", "${BROKERS}")],
            ),
        ),
    ];
    for (mistake, service) in &broken {
        assert!(
            load_service(mistake, service, &none).is_err(),
            "a service with {mistake} should not load"
        );
    }

    assert_eq!(
        interpolate("${SECRET:?set it}/$$HOME/${PORT:-8080}").as_deref(),
        Ok(format!("{REQUIRED}/$HOME/8080").as_str())
    );
    assert!(interpolate("$SECRET").is_err());
    assert_eq!(
        Port::Short("127.0.0.1:8081:8081/tcp".into()).mapping(),
        Ok((Some(8081), 8081))
    );
    assert_eq!(
        address("http://user@clickhouse:8123/ping"),
        Some(("clickhouse".into(), 8123, "/ping".into()))
    );
}
