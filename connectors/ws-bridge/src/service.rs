//! The bridge assembled, as the pipeline's `run` assembles the job: the feed thread that keeps
//! the store and the hub current, the Redis writer, the last-seen batches, the key-set refresh,
//! the tidying and `/readyz`, started together by [`start`] and stopped together by
//! [`Running::stop`]. Serving the routes of [`Running::bridge`] is the caller's (its listener,
//! TLS and all).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use schemas::Codec;
use tokio::task::JoinHandle;

use crate::auth::{AuthError, Verifier};
use crate::cache::{Cache, CacheError};
use crate::config::BridgeConfig;
use crate::feed::{self, FeedError, Topics};
use crate::hub::Hub;
use crate::keys::{KeyError, KeySet};
use crate::limits::Limits;
use crate::rates::Rates;
use crate::server::{Bridge, Render, readers};
use crate::store::Store;

/// How often the devices that changed are written to Redis: the cache trails the live events by
/// about this much.
const WRITE_EVERY: Duration = Duration::from_millis(100);

/// What the bridge runs on.
pub struct Setup {
    /// `[bridge]`, validated.
    pub config: BridgeConfig,
    /// librdkafka properties (`bootstrap.servers` and the user's `[kafka]` settings).
    pub kafka: Vec<(String, String)>,
    /// The derived topics it reads.
    pub topics: Topics,
    /// Decoder of the derived records.
    pub codec: Codec,
    /// Renders `/metrics`.
    pub metrics: Render,
    /// Set to stop (the caller's signal handler sets it too).
    pub stop: Arc<AtomicBool>,
}

/// Why the bridge could not start; each names the key to look at.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Redis refused or could not be reached in time.
    #[error("bridge.redis_url: {0}")]
    Redis(#[from] CacheError),
    /// The token secret is not usable.
    #[error("bridge.jwt_secret: {0}")]
    Secret(#[from] AuthError),
    /// The identity provider's key set file cannot be read.
    #[error("bridge.jwks_file: {0}")]
    KeysFile(KeyError),
    /// The identity provider's key set URL is not usable.
    #[error("bridge.jwks_url: {0}")]
    KeysUrl(KeyError),
}

/// Why the bridge's background work failed.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The feed could not read the topics.
    #[error("the feed failed: {0}")]
    Feed(#[from] FeedError),
    /// A task panicked.
    #[error("{0} failed: {1}")]
    Task(&'static str, tokio::task::JoinError),
}

/// A started bridge: its shared state, to serve, and its background work.
pub struct Running {
    /// What the routes serve ([`crate::server::router`]).
    pub bridge: Arc<Bridge>,
    stop: Arc<AtomicBool>,
    feed: JoinHandle<Result<(), FeedError>>,
    writer: Option<JoinHandle<()>>,
    /// Tasks that end with the process: no batch is owed to anyone once connections close.
    background: Vec<JoinHandle<()>>,
}

/// Connects to Redis (when configured), starts the feed and the background tasks, and returns
/// the bridge to serve.
pub async fn start(setup: Setup) -> Result<Running, StartError> {
    let Setup {
        config: c,
        kafka,
        topics,
        codec,
        metrics,
        stop,
    } = setup;
    let cache = match c.redis() {
        None => None,
        Some(redis) => {
            redis.check(Duration::from_secs(5)).await?;
            Some(Cache::connect(&redis)?)
        }
    };
    let store = Arc::new(if cache.is_some() {
        Store::noting_changes()
    } else {
        Store::default()
    });
    let hub = Arc::new(Hub::new(c.client_queue, c.resume_events, c.resume_bytes));
    let kafka_up = Arc::new(AtomicBool::new(false));
    let feed = {
        let (store, hub, stop, up) = (
            Arc::clone(&store),
            Arc::clone(&hub),
            Arc::clone(&stop),
            Arc::clone(&kafka_up),
        );
        tokio::task::spawn_blocking(move || {
            feed::run(&kafka, &topics, &codec, &store, &hub, &stop, &up)
        })
    };
    let writer = cache.as_ref().map(|cache| {
        let (cache, store, hub, stop) = (
            Arc::clone(cache),
            Arc::clone(&store),
            Arc::clone(&hub),
            Arc::clone(&stop),
        );
        let retention = Duration::from_millis(c.device_retention_ms);
        tokio::spawn(async move {
            cache
                .write_behind(&store, &hub, WRITE_EVERY, retention, &stop)
                .await;
        })
    });
    let mut background = Vec::new();
    {
        let (hub, stop) = (Arc::clone(&hub), Arc::clone(&stop));
        let every = Duration::from_millis(c.last_seen_every_ms);
        background.push(tokio::spawn(async move {
            hub.send_last_seen_every(every, &stop).await;
        }));
    }
    let mut verifier = Verifier::new(&c.jwt_secret, c.token_rules())?;
    if let Some(path) = &c.jwks_file {
        verifier = verifier.with_keys(KeySet::file(path).map_err(StartError::KeysFile)?);
    } else if !c.jwks_url.is_empty() {
        let keys = KeySet::url(&c.jwks_url).map_err(StartError::KeysUrl)?;
        let every = Duration::from_secs(c.jwks_refresh_s);
        background.push(tokio::spawn(Arc::clone(&keys).keep_fresh(every)));
        verifier = verifier.with_keys(keys);
    }
    let ready = Arc::clone(&kafka_up);
    let redis = cache.clone();
    let keys_ready = verifier.clone();
    let bridge = Arc::new(Bridge {
        limits: Limits::new(c.max_connections_per_address, c.max_connections_per_tenant),
        rates: Rates::new(&c),
        config: c,
        verifier,
        store,
        cache,
        hub,
        connections: AtomicUsize::new(0),
        readers: readers(),
        metrics,
        ready: Box::new(move || {
            if !ready.load(Ordering::Relaxed) {
                Some("kafka is not answering, or the bridge has not read the topics yet")
            } else if redis.as_ref().is_some_and(|r| !r.up()) {
                Some("redis is not answering")
            } else if !keys_ready.ready() {
                Some("the key set at bridge.jwks_url has not been fetched yet")
            } else {
                None
            }
        }),
    });
    {
        let bridge = Arc::clone(&bridge);
        background.push(tokio::spawn(async move { bridge.tidy().await }));
    }
    Ok(Running {
        bridge,
        stop,
        feed,
        writer,
        background,
    })
}

impl Running {
    /// Resolves once the stop flag is set (by a signal, or by [`Running::stop`]).
    pub async fn stopped(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the feed and the Redis writer and waits for them (the writer writes what changed
    /// last); the other tasks end with it.
    pub async fn stop(self) -> Result<(), StopError> {
        self.stop.store(true, Ordering::Relaxed);
        let fed = self
            .feed
            .await
            .map_err(|e| StopError::Task("the feed thread", e))?;
        if let Some(writer) = self.writer {
            writer
                .await
                .map_err(|e| StopError::Task("the redis writer", e))?;
        }
        for task in self.background {
            task.abort();
        }
        Ok(fed?)
    }
}
