//! `POST /v1/telemetry`: the key checked, the lines made readings, the accepted ones written, and
//! an answer per line, in the manner of Elasticsearch's bulk API: `200` with `errors` and one item
//! per line whenever the batch was looked at; `401` for a missing, wrong or revoked key, `413` for
//! a body or batch over the limits, `429` (with `Retry-After`) past the key's rate, `503` when
//! Kafka took none of the accepted lines.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;

use crate::config::IngestConfig;
use crate::events;
use crate::keys::{Credential, Keys, Refused};
use crate::lines::{Refusal, Rules, split};
use crate::produce::Producer;

/// What the server works with.
pub struct App {
    keys: Arc<Keys>,
    rules: Rules,
    producer: Arc<Producer>,
    limiter: DefaultKeyedRateLimiter<String>,
    max_lines: usize,
    clock: fn() -> i64,
}

impl App {
    /// The server of `config`, checking keys against `keys`, lines by `rules`, writing with
    /// `producer`, stamping readings without a time with `clock` (ms since the epoch).
    pub fn new(
        config: &IngestConfig,
        keys: Arc<Keys>,
        rules: Rules,
        producer: Arc<Producer>,
        clock: fn() -> i64,
    ) -> App {
        let per_s = NonZeroU32::new(config.readings_per_s).unwrap_or(NonZeroU32::MIN);
        // A full batch must always fit the bucket, or a key could never send one.
        let burst = u32::try_from(config.max_lines)
            .unwrap_or(u32::MAX)
            .max(per_s.get());
        let quota = Quota::per_second(per_s).allow_burst(NonZeroU32::new(burst).unwrap_or(per_s));
        App {
            keys,
            rules,
            producer,
            limiter: RateLimiter::keyed(quota),
            max_lines: config.max_lines,
            clock,
        }
    }
}

/// The routes: `POST /v1/telemetry`, bodies up to `max_body_bytes`.
pub fn router(app: Arc<App>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/telemetry", post(telemetry))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(app)
}

/// One line's outcome in the answer.
#[derive(Debug, Serialize)]
struct Item {
    line: usize,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// The answer to a batch that was looked at.
#[derive(Debug, Serialize)]
struct Answer {
    accepted: usize,
    refused: usize,
    errors: bool,
    lines: Vec<Item>,
}

fn refuse(status: StatusCode, message: &str) -> Response {
    events::request(status.as_u16());
    let mut response =
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// The key a request presents: `Authorization: Bearer ...` or `X-Api-Key`.
fn presented(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

async fn telemetry(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let who: Credential = match presented(&headers)
        .ok_or(Refused::Missing)
        .and_then(|key| app.keys.verify(key))
    {
        Ok(who) => who,
        Err(why) => return refuse(StatusCode::UNAUTHORIZED, why.as_str()),
    };
    let lines = split(&body);
    if lines.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "no readings in the body");
    }
    if lines.len() > app.max_lines {
        let message = format!(
            "{} lines, over ingest.max_lines {}",
            lines.len(),
            app.max_lines
        );
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, &message);
    }
    let n =
        NonZeroU32::new(u32::try_from(lines.len()).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
    match app.limiter.check_key_n(&who.id, n) {
        Ok(Ok(())) => {}
        Ok(Err(not_until)) => {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let mut response = refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "over ingest.readings_per_s for this key",
            );
            let seconds = wait.max(Duration::from_secs(1)).as_secs().to_string();
            if let Ok(v) = header::HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return response;
        }
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "over the key's burst"),
    }
    let now = (app.clock)();
    let mut items = Vec::with_capacity(lines.len());
    let mut readings = Vec::new();
    let mut accepted_at = Vec::new();
    for (number, line) in &lines {
        match app.rules.reading(line, &who, now) {
            Ok(t) => {
                accepted_at.push(items.len());
                readings.push(t);
                items.push(Item {
                    line: *number,
                    status: "accepted",
                    reason: None,
                    detail: None,
                });
            }
            Err(refusal) => items.push(refused(*number, refusal)),
        }
    }
    let written = app.producer.send(&readings, &who).await;
    let mut unavailable = 0;
    for (at, outcome) in accepted_at.into_iter().zip(written) {
        if let Err(e) = outcome {
            unavailable += 1;
            let line = items[at].line;
            items[at] = refused(
                line,
                Refusal {
                    reason: "unavailable",
                    detail: format!("Kafka did not acknowledge it: {e}"),
                },
            );
        }
    }
    let refused_lines = items.iter().filter(|i| i.status != "accepted").count();
    let accepted = items.len() - refused_lines;
    events::accepted(accepted);
    let status = if unavailable > 0 && accepted == 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    events::request(status.as_u16());
    tracing::debug!(key = %who.id, accepted, refused = refused_lines, "batch");
    let answer = Answer {
        accepted,
        refused: refused_lines,
        errors: refused_lines > 0,
        lines: items,
    };
    (status, axum::Json(answer)).into_response()
}

fn refused(line: usize, refusal: Refusal) -> Item {
    events::refused(refusal.reason);
    Item {
        line,
        status: "refused",
        reason: Some(refusal.reason),
        detail: Some(refusal.detail),
    }
}
