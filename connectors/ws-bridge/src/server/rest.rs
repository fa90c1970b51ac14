//! The tenant-scoped REST endpoints: `/api/devices` (filtered, in pages) and
//! `/api/devices/{id}`, each behind a valid token and its rate.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{Authorized, Bridge, refuse};
use crate::events::{self, Refusal};
use crate::key;
use crate::store::DeviceKey;

/// Filters and a page of `/api/devices`.
#[derive(Debug, Deserialize)]
pub(super) struct DeviceQuery {
    status: Option<String>,
    class: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
    limit: Option<usize>,
}

/// A 429 for a token past `bridge.api_requests_per_s`.
fn api_limited(b: &Bridge) -> Response {
    events::refused(Refusal::ApiRate);
    refuse(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "at most {} requests a second per token",
            b.config.api_requests_per_s
        ),
    )
}

pub(super) async fn devices(
    Authorized(claims, token): Authorized,
    State(b): State<Arc<Bridge>>,
    Query(q): Query<DeviceQuery>,
) -> Response {
    if !b.rates.api(&token) {
        return api_limited(&b);
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let after: Option<DeviceKey> = match q.after.as_deref().map(key::decode) {
        None => None,
        Some(Some(after)) => Some(after),
        Some(None) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`after` is not a `next` of this endpoint".into(),
            );
        }
    };
    let tenant = (!claims.is_admin()).then_some(claims.tenant);
    // One page: bounded work (see `Store::page`), done here.
    let (page, next) = b.store.page(tenant.as_deref(), after.as_ref(), limit, |d| {
        q.status
            .as_ref()
            .is_none_or(|s| d.status.as_ref() == Some(s))
            && q.class
                .as_ref()
                .is_none_or(|c| d.device_class.as_ref() == Some(c))
    });
    let next = next.map(|(t, d)| key::encode(&t, &d));
    Json(serde_json::json!({ "devices": page, "next": next })).into_response()
}

pub(super) async fn device(
    Authorized(claims, token): Authorized,
    State(b): State<Arc<Bridge>>,
    Path(id): Path<String>,
) -> Response {
    if !b.rates.api(&token) {
        return api_limited(&b);
    }
    let found = if claims.is_admin() {
        // Admins name a device by its id alone: the first tenant's that has one.
        let store = Arc::clone(&b.store);
        let (wanted, page) = (id.clone(), b.config.snapshot_page);
        b.read(move || store.pages(None, None, page, |d| d.device_id == wanted))
            .await
            .and_then(|found| found.into_iter().next())
    } else {
        b.store.device(&claims.tenant, &id)
    };
    match found {
        Some(d) => Json(d).into_response(),
        None => refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no device {id}"),
        ),
    }
}
