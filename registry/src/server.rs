//! `fleetpulse registry`: the subset of the Confluent Schema Registry REST API that producers,
//! consumers and their serializers use, over [`Subjects`]. Responses and error codes follow
//! Confluent's (`{"error_code": 40401, "message": ...}`), so Confluent's own clients work.
//!
//! Reads never wait for a registration: a registration works on a copy of the registry (one at
//! a time), writes and syncs the state file from it on a blocking thread, and only then puts the
//! copy in place; a read takes whichever registry is in place.

use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::RegistryError;
use crate::events;
use crate::subjects::{Compatibility, Subjects};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The registry in place, and the lock registrations take one after another.
struct Registry {
    current: RwLock<Arc<Subjects>>,
    writing: Mutex<()>,
}

type Shared = Arc<Registry>;

/// The registry in place now.
fn current(shared: &Shared) -> Arc<Subjects> {
    // A panic while holding the lock cannot leave a registry half-updated: a whole new one is
    // put in place.
    Arc::clone(
        &shared
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    )
}

/// The server's routes over a registry. `metrics` renders `/metrics` (Prometheus text).
pub fn router(subjects: Subjects, metrics: impl Fn() -> String + Send + Sync + 'static) -> Router {
    events::schemas(subjects.schema_count());
    // A schema's JSON string may escape some of its characters: room for twice its bound.
    let body_limit = subjects.limits().schema_bytes.saturating_mul(2) + 16 * 1024;
    let shared: Shared = Arc::new(Registry {
        current: RwLock::new(Arc::new(subjects)),
        writing: Mutex::new(()),
    });
    let metrics = Arc::new(metrics);
    Router::new()
        .route("/", get(|| async { Json(json!({})) }))
        .route("/subjects", get(list_subjects))
        .route("/subjects/{subject}", post(lookup))
        .route(
            "/subjects/{subject}/versions",
            get(list_versions).post(register),
        )
        .route("/subjects/{subject}/versions/{version}", get(get_version))
        .route("/schemas/ids/{id}", get(get_schema))
        .route("/schemas/types", get(|| async { Json(json!(["AVRO"])) }))
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_compatibility),
        )
        .route("/config", get(config))
        .route("/config/{subject}", get(config))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(move || std::future::ready(metrics())))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .with_state(shared)
}

/// Makes registrations (`POST /subjects/{subject}/versions`) need `Authorization: Bearer
/// <token>`; every read, and the lookups and compatibility checks consumers make, stay open.
pub fn require_write_token(router: Router, token: &str) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        Arc::<str>::from(token),
        guard_writes,
    ))
}

async fn guard_writes(
    State(token): State<Arc<str>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let registers = request.method() == axum::http::Method::POST
        && request.uri().path().starts_with("/subjects/")
        && request.uri().path().ends_with("/versions");
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !registers || given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    events::request("register", 401);
    let body =
        json!({"error_code": 40101, "message": "registering needs the registry's write token"});
    let mut response = (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Compares in time that depends on the length only, so the answer's timing does not tell how
/// much of a guessed token was right. Written here: one comparison does not need a crate.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A Confluent-style reply: the JSON body, its status, and the route it answers, for metrics.
struct Reply {
    route: &'static str,
    result: Result<Value, RegistryError>,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let (status, body) = match self.result {
            Ok(body) => (StatusCode::OK, body),
            Err(e) => {
                let (status, code) = error_code(&e);
                (
                    status,
                    json!({"error_code": code, "message": e.to_string()}),
                )
            }
        };
        events::request(self.route, status.as_u16());
        let mut response = (status, Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

fn error_code(e: &RegistryError) -> (StatusCode, u32) {
    match e {
        RegistryError::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
        RegistryError::VersionNotFound { .. } => (StatusCode::NOT_FOUND, 40402),
        RegistryError::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
        RegistryError::Incompatible { .. } => (StatusCode::CONFLICT, 409),
        RegistryError::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
        // Not one of Confluent's: its registry has no such bounds.
        RegistryError::Full(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42210),
        RegistryError::Unavailable { .. }
        | RegistryError::Untrusted { .. }
        | RegistryError::Refused(_)
        | RegistryError::Schema(_)
        | RegistryError::StateFile { .. } => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
    }
}

/// The body clients send with a schema.
#[derive(Deserialize)]
struct SchemaBody {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<Value>>,
}

impl SchemaBody {
    /// Only self-contained Avro schemas are served.
    fn avro(self) -> Result<String, RegistryError> {
        if let Some(t) = self.schema_type.filter(|t| !t.eq_ignore_ascii_case("AVRO")) {
            return Err(RegistryError::InvalidSchema(format!(
                "schemaType {t} is not supported, only AVRO"
            )));
        }
        if self.references.is_some_and(|r| !r.is_empty()) {
            return Err(RegistryError::InvalidSchema(
                "schema references are not supported".into(),
            ));
        }
        Ok(self.schema)
    }
}

/// `latest`, `-1` or a version number.
fn parse_version(subject: &str, version: &str) -> Result<Option<u32>, RegistryError> {
    match version {
        "latest" | "-1" => Ok(None),
        v => v
            .parse::<u32>()
            .map(Some)
            .map_err(|_| RegistryError::VersionNotFound {
                subject: subject.to_string(),
                version: v.to_string(),
            }),
    }
}

fn to_json(value: impl serde::Serialize) -> Result<Value, RegistryError> {
    serde_json::to_value(value).map_err(|e| RegistryError::InvalidSchema(e.to_string()))
}

async fn list_subjects(State(s): State<Shared>) -> Reply {
    Reply {
        route: "subjects",
        result: to_json(current(&s).subjects()),
    }
}

async fn list_versions(State(s): State<Shared>, Path(subject): Path<String>) -> Reply {
    Reply {
        route: "versions",
        result: current(&s).versions(&subject).and_then(to_json),
    }
}

async fn get_version(
    State(s): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
) -> Reply {
    let result = parse_version(&subject, &version)
        .and_then(|v| current(&s).version(&subject, v))
        .and_then(to_json);
    Reply {
        route: "version",
        result,
    }
}

async fn get_schema(State(s): State<Shared>, Path(id): Path<String>) -> Reply {
    let result = id
        .parse::<u32>()
        .map_err(|_| RegistryError::SchemaNotFound(format!("id {id}")))
        .and_then(|id| current(&s).schema(id).map(|text| json!({"schema": text})));
    Reply {
        route: "schema_by_id",
        result,
    }
}

async fn register(
    State(s): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<SchemaBody>,
) -> Reply {
    let result = match body.avro() {
        Err(e) => Err(e),
        Ok(text) => {
            let registering = tokio::task::spawn_blocking(move || {
                let _one_at_a_time = s
                    .writing
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let now = current(&s);
                // Registered already: nothing to copy or write.
                if let Ok(existing) = now.lookup(&subject, &text) {
                    return Ok(json!({"id": existing.id}));
                }
                let mut next = Subjects::clone(&now);
                let id = next.register(&subject, &text)?;
                events::schemas(next.schema_count());
                *s.current
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
                tracing::info!(subject, id, "schema registered");
                Ok(json!({"id": id}))
            });
            registering.await.unwrap_or_else(|e| {
                Err(RegistryError::Refused(format!(
                    "the registration failed: {e}"
                )))
            })
        }
    };
    Reply {
        route: "register",
        result,
    }
}

async fn lookup(
    State(s): State<Shared>,
    Path(subject): Path<String>,
    Json(body): Json<SchemaBody>,
) -> Reply {
    let result = body
        .avro()
        .and_then(|text| current(&s).lookup(&subject, &text))
        .and_then(to_json);
    Reply {
        route: "lookup",
        result,
    }
}

async fn check_compatibility(
    State(s): State<Shared>,
    Path((subject, version)): Path<(String, String)>,
    Json(body): Json<SchemaBody>,
) -> Reply {
    let result = parse_version(&subject, &version).and_then(|v| {
        let text = body.avro()?;
        match current(&s).check_compatible(&subject, v, &text) {
            Ok(()) => Ok(json!({"is_compatible": true})),
            Err(RegistryError::Incompatible { detail, .. }) => {
                Ok(json!({"is_compatible": false, "messages": [detail]}))
            }
            Err(e) => Err(e),
        }
    });
    Reply {
        route: "compatibility",
        result,
    }
}

async fn config() -> Reply {
    Reply {
        route: "config",
        result: Ok(json!({"compatibilityLevel": Compatibility::Backward})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (u16, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("response");
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn confluent_shapes_and_codes() {
        let app = router(Subjects::builtin(), String::new);
        let (status, body) = call(&app, "GET", "/schemas/ids/2", None).await;
        assert_eq!(status, 200);
        assert!(
            body["schema"]
                .as_str()
                .is_some_and(|s| s.contains("signal_dbm"))
        );

        let (status, body) = call(
            &app,
            "GET",
            "/subjects/telemetry-value/versions/latest",
            None,
        )
        .await;
        assert_eq!(
            (status, body["id"].as_u64(), body["version"].as_u64()),
            (200, Some(2), Some(2))
        );

        let (status, body) = call(&app, "GET", "/subjects/nope/versions", None).await;
        assert_eq!((status, body["error_code"].as_u64()), (404, Some(40401)));
        let (status, body) = call(&app, "GET", "/schemas/ids/77", None).await;
        assert_eq!((status, body["error_code"].as_u64()), (404, Some(40403)));

        let other = json!({"schema": r#"{"type":"record","name":"X","fields":[{"name":"a","type":"long"}]}"#});
        let (status, body) = call(
            &app,
            "POST",
            "/subjects/x-value/versions",
            Some(other.clone()),
        )
        .await;
        assert_eq!(
            (status, body["id"].as_u64()),
            (200, Some(schemas::builtin_schemas().len() as u64 + 1))
        );
        let (status, body) = call(&app, "POST", "/subjects/x-value", Some(other)).await;
        assert_eq!((status, body["version"].as_u64()), (200, Some(1)));

        let breaking = json!({"schema": r#"{"type":"record","name":"X","fields":[{"name":"b","type":"long"}]}"#});
        let (status, body) = call(
            &app,
            "POST",
            "/compatibility/subjects/x-value/versions/latest",
            Some(breaking.clone()),
        )
        .await;
        assert_eq!(
            (status, body["is_compatible"].as_bool()),
            (200, Some(false))
        );
        let (status, body) = call(&app, "POST", "/subjects/x-value/versions", Some(breaking)).await;
        assert_eq!((status, body["error_code"].as_u64()), (409, Some(409)));

        let invalid = json!({"schema": "{", "schemaType": "AVRO"});
        let (status, body) = call(&app, "POST", "/subjects/x-value/versions", Some(invalid)).await;
        assert_eq!((status, body["error_code"].as_u64()), (422, Some(42201)));
        let proto = json!({"schema": "syntax = \"proto3\";", "schemaType": "PROTOBUF"});
        let (status, _) = call(&app, "POST", "/subjects/y-value/versions", Some(proto)).await;
        assert_eq!(status, 422);
    }
}
