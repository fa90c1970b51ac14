//! The bridge holds its ground against the running process, Kafka and Redis: a client looping
//! subscribe/unsubscribe is answered `rate_limited` and dropped while another tenant's pings
//! keep their pace; the resume ring stays under its byte bound however large the events; a
//! device the pipeline retires leaves the store, Redis and the dashboard; ids holding `/` (tenant
//! `a` with device `b/c`, tenant `a/b` with device `c`) stay two devices in Redis, REST pages and
//! the dashboard; RS256 and ES256 tokens from an identity provider's key set (a file, or a URL
//! that rotates its keys) are accepted and held to the same rules; `/metrics` can have a private
//! listener of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::bridge::*;
use e2e::browser::Browser;
use e2e::ws::Ws;
use e2e::*;
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use schemas::{DeviceStatus, TransitionReason};
use testkit::Kind;
use tokio_tungstenite::tungstenite::Message;
use ws_bridge::auth::now;

/// A ping's round trip: `ping` sent, `heartbeat` back.
async fn round_trip(ws: &mut Ws) -> Duration {
    let started = Instant::now();
    say(ws, r#"{"type":"ping"}"#).await;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a heartbeat within 10 s")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m
            && t.contains("\"heartbeat\"")
        {
            return started.elapsed();
        }
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_looping_subscriptions_is_rate_limited_and_dropped_while_others_keep_their_pace() {
    let (brokers, prefix) = fresh_derived("bridge-rate", 1).await;
    let p = Producing::new(brokers, &prefix);
    // Snapshots with some work in them: a thousand devices of the looping tenant.
    for i in 0..1_000 {
        p.send(
            "status",
            &status(
                "t1",
                &format!("d-{i}"),
                DeviceStatus::Online,
                1_700_000_000_000,
            ),
        );
    }
    p.send(
        "status",
        &status("t2", "quiet", DeviceStatus::Online, 1_700_000_000_000),
    );
    p.flush();
    // heartbeat_ms long: the only heartbeats are the answers to pings.
    let (_bridge, base) = bridge(brokers, &prefix, &["--set", "bridge.heartbeat_ms=60000"]);
    let t1 = token("t1", "viewer", now() + 600, SECRET);
    let t2 = token("t2", "viewer", now() + 600, SECRET);
    assert!(testkit::wait_for(Duration::from_secs(30), || {
        http(
            &base,
            "GET",
            &format!("/api/devices/d-999?token={t1}"),
            None,
        )
        .0 == 200
    }));

    let mut other = connect(&base, Some(&t2)).await.unwrap();
    next(&mut other).await;
    // Pings well under the connection's own rate (20 a second).
    let mut before = Vec::new();
    for _ in 0..20 {
        before.push(round_trip(&mut other).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The loop waits for each answer, as a buggy dashboard would: what it is told reaches it
    // before the bridge closes the connection.
    let mut looping = connect(&base, Some(&t1)).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut codes = Vec::new();
        let mut snapshots = 0;
        for _ in 0..1_000 {
            for (text, answer) in [
                (r#"{"type":"subscribe","topics":["tenant"]}"#, "snapshot"),
                (
                    r#"{"type":"unsubscribe","topics":["tenant"]}"#,
                    "subscribed",
                ),
            ] {
                if looping.send(Message::Text(text.into())).await.is_err() {
                    return (codes, snapshots, true);
                }
                loop {
                    let m =
                        match tokio::time::timeout(Duration::from_secs(30), looping.next()).await {
                            Err(_) => return (codes, snapshots, false),
                            Ok(None | Some(Err(_) | Ok(Message::Close(_)))) => {
                                return (codes, snapshots, true);
                            }
                            Ok(Some(Ok(Message::Text(t)))) => {
                                serde_json::from_str::<serde_json::Value>(&t).unwrap()
                            }
                            Ok(Some(Ok(_))) => continue,
                        };
                    // A snapshot comes in pages of 100 devices: the last has no `more`.
                    let last_page = m.get("more").is_none();
                    match m["type"].as_str() {
                        Some("error") => {
                            codes.push(m["code"].as_str().unwrap().to_string());
                            break;
                        }
                        Some("snapshot") if last_page => snapshots += 1,
                        _ => {}
                    }
                    if m["type"] == answer && last_page {
                        break;
                    }
                }
            }
        }
        (codes, snapshots, false)
    });
    let mut during = Vec::new();
    while during.len() < 5 || !reader.is_finished() && during.len() < 200 {
        during.push(round_trip(&mut other).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (codes, snapshots, closed) = reader.await.unwrap();
    assert!(closed, "the looping client is disconnected");
    assert!(
        codes.iter().any(|c| c == "rate_limited"),
        "told it is rate limited first: {codes:?}"
    );
    assert_eq!(codes.last().map(String::as_str), Some("limit"), "{codes:?}");
    assert!(
        snapshots <= 12,
        "snapshots held to their own rate (a burst of 10): {snapshots}"
    );
    let (before, during) = (median(before), median(during));
    println!("another tenant's ping round trip: {before:?} before, {during:?} during the loop");
    assert!(
        during < (before * 20).max(Duration::from_millis(100)),
        "another tenant keeps its pace: {before:?} before, {during:?} during"
    );
    // It is still served, and the metrics name the limit.
    round_trip(&mut other).await;
    let (_, metrics) = http_text(&base, "GET", "/metrics", None);
    assert!(
        metrics.contains("fleetpulse_bridge_rate_limited_total{limit=\"connection\"}"),
        "{metrics}"
    );

    // REST: a token past its rate gets 429 `rate_limited`; another token is served.
    let codes: Vec<u16> = (0..40)
        .map(|_| http_text(&base, "GET", &format!("/api/devices?token={t1}"), None).0)
        .collect();
    assert!(codes.contains(&429), "{codes:?}");
    assert_eq!(
        http_text(&base, "GET", &format!("/api/devices?token={t2}"), None).0,
        200
    );
}

/// A gauge's value in Prometheus text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_of_large_events_stays_under_its_byte_bound() {
    let (brokers, prefix) = fresh_derived("bridge-ring", 1).await;
    let (_bridge, base) = bridge(brokers, &prefix, &["--set", "bridge.resume_bytes=200000"]);
    let t1 = token("t1", "viewer", now() + 600, SECRET);
    let mut ws = connect(&base, Some(&t1)).await.unwrap();
    next(&mut ws).await;
    say(&mut ws, r#"{"type":"subscribe","topics":["anomalies"]}"#).await;
    next(&mut ws).await;
    let first = next(&mut ws).await;
    let cursor = first["cursor"].as_str().unwrap().to_string();

    // 300 anomalies of about 5 KB: 1.5 MB, against a bound of 200 KB.
    let p = Producing::new(brokers, &prefix);
    for i in 0..300 {
        let mut a = anomaly("t1", &format!("d-{i}"), 1_700_000_000_000 + i);
        a.message = "x".repeat(5_000);
        p.send("anomalies", &a);
    }
    p.flush();
    let mut got = 0;
    while got < 300 {
        if next(&mut ws).await["type"] == "anomaly" {
            got += 1;
        }
    }
    let (_, metrics) = http_text(&base, "GET", "/metrics", None);
    let bytes = gauge(&metrics, "fleetpulse_bridge_resume_bytes").unwrap();
    let events = gauge(&metrics, "fleetpulse_bridge_resume_events").unwrap();
    println!("the ring holds {events} events in {bytes} bytes");
    assert!(bytes <= 200_000.0, "{bytes} bytes");
    assert!((20.0..60.0).contains(&events), "{events} events of ~5 KB");
    // A client that saw none of them cannot be served from the ring any more.
    let mut back = connect(&base, Some(&t1)).await.unwrap();
    next(&mut back).await;
    say(
        &mut back,
        &format!(r#"{{"type":"subscribe","topics":["anomalies"],"cursor":"{cursor}"}}"#),
    )
    .await;
    assert_eq!(next(&mut back).await["type"], "subscribed");
    assert_eq!(next(&mut back).await["code"], "resync");
}

/// The (tenant, device) pairs of every page of `/api/devices` for `token`, `limit` at a time.
fn every_page(base: &str, token: &str, limit: usize) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut after = String::new();
    for _ in 0..100 {
        let (code, page) = http(
            base,
            "GET",
            &format!("/api/devices?limit={limit}&token={token}{after}"),
            None,
        );
        assert_eq!(code, 200, "{page}");
        for d in page["devices"].as_array().unwrap() {
            pairs.push((
                d["tenant_id"].as_str().unwrap().to_string(),
                d["device_id"].as_str().unwrap().to_string(),
            ));
        }
        match page["next"].as_str() {
            // The cursor is opaque: sent back as it came, URL-encoded.
            Some(next) => {
                after = format!(
                    "&after={}",
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                );
            }
            None => return pairs,
        }
    }
    panic!("pagination does not end: {pairs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slashed_ids_stay_apart_and_a_retired_device_leaves_the_store_redis_and_the_dashboard() {
    let (brokers, prefix) = fresh_derived("bridge-keys", 1).await;
    let redis = testkit::Service::start(Kind::Redis);
    let redis_url = redis.address().to_string();
    let p = Producing::new(brokers, &prefix);
    let t0 = 1_700_000_000_000;
    p.send("status", &status("a", "b/c", DeviceStatus::Online, t0));
    p.send("status", &status("a/b", "c", DeviceStatus::Offline, t0));
    p.send("status", &status("a", "gone", DeviceStatus::Online, t0));
    p.flush();
    let (_bridge, base) = bridge(brokers, &prefix, &["--redis-url", &redis_url]);

    // Redis: two devices, each under its own key, neither hiding the other.
    assert!(testkit::wait_for(Duration::from_secs(30), || {
        redis_cli(&redis_url, &["EXISTS", "device:status:a/gone"]) == "1"
    }));
    assert_eq!(
        redis_cli(
            &redis_url,
            &["HMGET", "device:status:a/b/c", "tenant", "device", "status"]
        ),
        "a\nb/c\nonline"
    );
    assert_eq!(
        redis_cli(
            &redis_url,
            &[
                "HMGET",
                "device:status:a%2Fb/c",
                "tenant",
                "device",
                "status"
            ]
        ),
        "a/b\nc\noffline"
    );

    // The pipeline retires `gone`: it leaves the store and Redis.
    let mut retired = status("a", "gone", DeviceStatus::Offline, t0 + 1_000);
    retired.reason = TransitionReason::Retired;
    retired.previous = Some(DeviceStatus::Online);
    p.send("status", &retired);
    p.flush();
    let a = token("a", "viewer", now() + 600, SECRET);
    assert!(testkit::wait_for(Duration::from_secs(30), || {
        http(&base, "GET", &format!("/api/devices/gone?token={a}"), None).0 == 404
    }));
    assert!(testkit::wait_for(Duration::from_secs(10), || {
        redis_cli(&redis_url, &["EXISTS", "device:status:a/gone"]) == "0"
    }));
    assert_eq!(
        redis_cli(&redis_url, &["SISMEMBER", "tenant:devices:a", "gone"]),
        "0"
    );
    assert_eq!(redis_cli(&redis_url, &["KEYS", "device:*gone*"]), "");

    // REST: an admin's pages, one device each, end and name each device once; each tenant
    // sees its own.
    let admin = token("ops", "admin", now() + 600, SECRET);
    let pair = |t: &str, d: &str| (t.to_string(), d.to_string());
    assert_eq!(
        every_page(&base, &admin, 1),
        [pair("a", "b/c"), pair("a/b", "c")]
    );
    let ab = token("a/b", "viewer", now() + 600, SECRET);
    assert_eq!(every_page(&base, &ab, 1), [pair("a/b", "c")]);
    assert_eq!(every_page(&base, &a, 1), [pair("a", "b/c")]);
    let (code, _) = http(
        &base,
        "GET",
        &format!("/api/devices?after=nope&token={a}"),
        None,
    );
    assert_eq!(code, 400, "a cursor this endpoint never gave");

    // A snapshot from Redis, as an admin: both.
    let mut ws = connect(&base, Some(&admin)).await.unwrap();
    next(&mut ws).await;
    say(&mut ws, r#"{"type":"subscribe","topics":["tenant"]}"#).await;
    next(&mut ws).await;
    let snapshot = next(&mut ws).await;
    let shown: Vec<(String, String)> = snapshot["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            pair(
                d["tenant_id"].as_str().unwrap(),
                d["device_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(shown, [pair("a", "b/c"), pair("a/b", "c")], "{snapshot}");

    // The dashboard, as an admin: two rows; `gone`'s retirement arriving live removes its row.
    p.send(
        "status",
        &status("a", "gone", DeviceStatus::Online, t0 + 2_000),
    );
    p.flush();
    let mut browser = Browser::open(&format!("{base}/?token={admin}")).await;
    assert_eq!(
        rows(&mut browser, 3).await,
        [pair("a", "b/c"), pair("a", "gone"), pair("a/b", "c")],
        "two devices, not merged"
    );
    let mut retired = status("a", "gone", DeviceStatus::Offline, t0 + 3_000);
    retired.reason = TransitionReason::Retired;
    p.send("status", &retired);
    p.flush();
    assert_eq!(
        rows(&mut browser, 2).await,
        [pair("a", "b/c"), pair("a/b", "c")],
        "the retired row left"
    );
}

/// Runs `shell`, which must succeed.
fn sh(shell: &str) {
    let done = std::process::Command::new("sh")
        .args(["-c", shell])
        .status()
        .unwrap();
    assert!(done.success(), "{shell}");
}

/// The dashboard's rows as (tenant, device), once there are `n` of them (or after 20 s).
async fn rows(browser: &mut Browser, n: usize) -> Vec<(String, String)> {
    let script = r##"JSON.stringify([...document.querySelectorAll("#rows tr")].map((r) => [r.dataset.tenant, r.dataset.device]))"##;
    let mut shown = Vec::new();
    for _ in 0..100 {
        let v = browser.eval(script).await;
        shown = serde_json::from_str(v.as_str().unwrap_or("[]")).unwrap_or_default();
        if shown.len() == n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shown
}

/// A private key made by `openssl`, in the DER form jsonwebtoken reads, and its public JWK.
fn key_pair(dir: &std::path::Path, name: &str, algorithm: Algorithm) -> (EncodingKey, Jwk) {
    let der = dir.join(format!("{name}.der")).display().to_string();
    if algorithm == Algorithm::RS256 {
        // PKCS#1, what jsonwebtoken's RSA DER reader takes.
        sh(&format!(
            "openssl genrsa -traditional 2048 2>/dev/null | openssl rsa -traditional -outform DER -out {der} 2>/dev/null"
        ));
        let key = EncodingKey::from_rsa_der(&std::fs::read(&der).unwrap());
        let mut jwk = Jwk::from_encoding_key(&key, algorithm).unwrap();
        jwk.common.key_id = Some(name.to_string());
        return (key, jwk);
    }
    // PKCS#8 for EC; the public point is the last 64 bytes of the public key's DER (X then Y).
    sh(&format!(
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | openssl pkcs8 -topk8 -nocrypt -outform DER -out {der}"
    ));
    let public = format!("{der}.pub");
    sh(&format!(
        "openssl pkey -inform DER -in {der} -pubout -outform DER -out {public}"
    ));
    let point = std::fs::read(&public).unwrap();
    let (x, y) = point[point.len() - 64..].split_at(32);
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    let jwk = serde_json::from_value(serde_json::json!({
        "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": name, "x": b64(x), "y": b64(y),
    }))
    .unwrap();
    (EncodingKey::from_ec_der(&std::fs::read(&der).unwrap()), jwk)
}

/// A token signed with `key`, naming `kid`, with these claims.
fn signed(key: &EncodingKey, algorithm: Algorithm, kid: &str, claims: serde_json::Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// What an identity provider puts in a token for a viewer of t1.
fn provider_claims(audience: &str) -> serde_json::Value {
    serde_json::json!({
        "sub": "someone@example.com",
        "iss": "https://id.example.com",
        "aud": audience,
        "exp": now() + 600,
        "iat": now(),
        "org": { "id": "t1" },
        "roles": ["viewer"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_from_a_key_set_file_or_url_are_accepted_and_held_to_the_rules() {
    let (brokers, prefix) = fresh_derived("bridge-jwks", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (rsa, rsa_jwk) = key_pair(dir.path(), "r1", Algorithm::RS256);
    let (ec, ec_jwk) = key_pair(dir.path(), "e1", Algorithm::ES256);
    let (stranger, _) = key_pair(dir.path(), "x1", Algorithm::ES256);
    let set = dir.path().join("jwks.json");
    std::fs::write(
        &set,
        serde_json::json!({ "keys": [rsa_jwk.clone(), ec_jwk.clone()] }).to_string(),
    )
    .unwrap();
    let rules = [
        "--set",
        "bridge.jwt_max_lifetime_s=3600",
        "--set",
        "bridge.jwt_issuer=https://id.example.com",
        "--set",
        "bridge.jwt_audience=fleetpulse",
        "--set",
        "bridge.jwt_tenant_claim=org.id",
        "--set",
        "bridge.jwt_role_claim=roles",
    ];
    let jwks_file = format!("bridge.jwks_file={}", set.display());
    let mut flags = rules.to_vec();
    flags.extend(["--set", &jwks_file]);
    let (_bridge, base) = bridge(brokers, &prefix, &flags);
    let status_of =
        |token: &str| http_text(&base, "GET", &format!("/api/devices?token={token}"), None).0;

    let good = provider_claims("fleetpulse");
    assert_eq!(
        status_of(&signed(&rsa, Algorithm::RS256, "r1", good.clone())),
        200,
        "RS256"
    );
    assert_eq!(
        status_of(&signed(&ec, Algorithm::ES256, "e1", good.clone())),
        200,
        "ES256"
    );
    let mut ws = connect(
        &base,
        Some(&signed(&ec, Algorithm::ES256, "e1", good.clone())),
    )
    .await
    .unwrap();
    let hello = next(&mut ws).await;
    assert_eq!(
        (hello["tenant"].as_str(), hello["role"].as_str()),
        (Some("t1"), Some("viewer"))
    );
    // Signed by a key not in the set, under a key id that is; a key id it does not hold; the
    // wrong audience; a key used for another algorithm's token; the shared secret still works.
    assert_eq!(
        status_of(&signed(&stranger, Algorithm::ES256, "e1", good.clone())),
        401
    );
    assert_eq!(
        status_of(&signed(&ec, Algorithm::ES256, "nobody", good.clone())),
        401
    );
    assert_eq!(
        status_of(&signed(
            &rsa,
            Algorithm::RS256,
            "r1",
            provider_claims("another")
        )),
        401
    );
    let mut no_issuer = good.clone();
    no_issuer["iss"] = "https://elsewhere.example.com".into();
    assert_eq!(
        status_of(&signed(&rsa, Algorithm::RS256, "r1", no_issuer)),
        401
    );
    let mut not_yet = good.clone();
    not_yet["nbf"] = (now() + 600).into();
    assert_eq!(
        status_of(&signed(&ec, Algorithm::ES256, "e1", not_yet)),
        401
    );
    let mut too_long = good.clone();
    too_long["exp"] = (now() + 86_400).into();
    assert_eq!(
        status_of(&signed(&ec, Algorithm::ES256, "e1", too_long)),
        401
    );
    assert_eq!(
        status_of(&signed(&rsa, Algorithm::RS256, "e1", good.clone())),
        401
    );
    drop(_bridge);

    // From a URL, as identity providers publish it: first only r1; e1 is added (a rotation)
    // and is taken once a token names it.
    let served = Arc::new(Mutex::new(
        serde_json::json!({ "keys": [rsa_jwk.clone()] }).to_string(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let document = Arc::clone(&served);
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let body = document.lock().unwrap().clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
        axum::serve(listener, app).await.unwrap();
    });
    let from_url = format!("bridge.jwks_url={jwks_url}");
    let mut flags = rules.to_vec();
    flags.extend(["--set", &from_url]);
    let (_bridge, base) = bridge(brokers, &prefix, &flags);
    let status_of =
        |token: &str| http_text(&base, "GET", &format!("/api/devices?token={token}"), None).0;
    assert_eq!(
        status_of(&signed(&rsa, Algorithm::RS256, "r1", good.clone())),
        200
    );
    let rotated = signed(&ec, Algorithm::ES256, "e1", good.clone());
    assert_eq!(status_of(&rotated), 401, "not published yet");
    *served.lock().unwrap() = serde_json::json!({ "keys": [rsa_jwk, ec_jwk] }).to_string();
    let started = Instant::now();
    assert!(
        testkit::wait_for(Duration::from_secs(30), || status_of(&rotated) == 200),
        "the new key is fetched"
    );
    println!("a rotated key was taken after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_a_private_listener() {
    let (brokers, prefix) = fresh_derived("bridge-metrics", 1).await;
    let public = format!("127.0.0.1:{}", free_port());
    let (child, private) = spawn_serving(
        fleetpulse()
            .args(["bridge", "--brokers", brokers, "--listen", &public])
            .args(["--set", &format!("bridge.jwt_secret={SECRET}")])
            .args(["--set", "bridge.metrics_listen=127.0.0.1:0"])
            .args(derived_topics(&prefix)),
    );
    let _bridge = Running(child);
    let public = format!("http://{public}");
    assert!(testkit::wait_for(Duration::from_secs(30), || {
        http_text(&public, "GET", "/readyz", None).0 == 200
    }));
    assert_ne!(private, public);
    assert_eq!(http_text(&public, "GET", "/metrics", None).0, 404);
    let (code, metrics) = http_text(&private, "GET", "/metrics", None);
    assert_eq!(code, 200);
    assert!(metrics.contains("fleetpulse_bridge"), "{metrics}");
    assert_eq!(
        http_text(&private, "GET", "/api/devices", None).0,
        404,
        "nothing else there"
    );
}
