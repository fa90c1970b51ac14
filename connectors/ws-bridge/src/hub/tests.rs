//! Tests of [`super`]: hub.rs's unit and property tests, kept apart so the module reads
//! as the code it is.

use super::*;

fn event(tenant: &str, kind: Kind) -> Arc<Event> {
    Arc::new(Event {
        tenant: tenant.into(),
        device: "d".into(),
        class: None,
        kind,
        json: "{}".into(),
        cursor: "".into(),
        source: Some(crate::cursor::Source {
            topic: 0,
            partition: 0,
            offset: 0,
        }),
        read_at: std::time::Instant::now(),
    })
}

#[test]
fn tenants_topics_and_a_full_queue() {
    let hub = Hub::new(2, 0, usize::MAX);
    let mut t1 = hub.register("t1", false);
    let mut admin = hub.register("ops", true);
    let everything: BTreeSet<Topic> = [Topic::Tenant].into();
    hub.subscribe(&t1, &[Topic::Status].into(), None);
    hub.subscribe(&admin, &everything, None);
    hub.publish(&event("t2", Kind::Status));
    hub.publish(&event("t1", Kind::Aggregate));
    hub.publish(&event("t1", Kind::Status));
    assert_eq!(
        t1.events.try_recv().map(|e| e.tenant.clone()).ok(),
        Some("t1".into())
    );
    assert!(
        t1.events.try_recv().is_err(),
        "t2's and the aggregate did not come"
    );
    // The admin got all three but has room for two: struck off, its queue closed.
    assert!(admin.slow.load(Ordering::Relaxed));
    assert_eq!(
        admin.events.try_recv().map(|e| e.tenant.clone()).ok(),
        Some("t2".into())
    );
    assert!(admin.events.try_recv().is_ok());
    assert!(matches!(
        admin.events.try_recv(),
        Err(mpsc::error::TryRecvError::Disconnected)
    ));
    hub.leave(&t1);
    hub.publish(&event("t1", Kind::Status));
    assert!(!t1.slow.load(Ordering::Relaxed));
}

fn at(tenant: &str, partition: i32, offset: i64, after: &mut Position) -> Arc<Event> {
    after.set(0, partition, offset + 1);
    Arc::new(Event {
        tenant: tenant.into(),
        device: format!("d{partition}"),
        class: None,
        kind: Kind::Status,
        json: format!("{partition}/{offset}").into(),
        cursor: after.encode().into(),
        source: Some(crate::cursor::Source {
            topic: 0,
            partition,
            offset,
        }),
        read_at: std::time::Instant::now(),
    })
}

#[test]
fn a_cursor_gets_what_came_after_it_or_a_resync() {
    let hub = Hub::new(100, 4, usize::MAX);
    let mut position = Position::default();
    position.set(0, 0, 5);
    position.set(0, 1, 0);
    hub.start_at(&position);
    let mut cursors = Vec::new();
    for (tenant, p, o) in [("t1", 0, 5), ("t1", 1, 0), ("t2", 1, 1), ("t1", 0, 6)] {
        let e = at(tenant, p, o, &mut position);
        hub.publish(&e);
        cursors.push(e.cursor.to_string());
    }
    let r = hub.register("t1", false);
    let topics: BTreeSet<Topic> = [Topic::Tenant].into();
    // Seen up to and with the first event: owed t1's second and fourth.
    let from = Position::decode(&cursors[0]).unwrap_or_default();
    let s = hub.subscribe(&r, &topics, Some(&from));
    assert_eq!(s.cursor.as_ref(), cursors[3]);
    let Owed::Missed(replay) = s.owed else {
        panic!("{:?}", s.owed)
    };
    let missed = replay.scan().unwrap();
    let got: Vec<&str> = missed.iter().map(|e| e.json.as_str()).collect();
    assert_eq!(got, ["1/0", "0/6"]);
    // Topics it already had are live, not owed again.
    let again = hub.subscribe(&r, &topics, Some(&from));
    assert!(matches!(again.owed, Owed::Missed(m) if m.scan().unwrap().is_empty()));
    // Before where the feed started: never read here.
    let r2 = hub.register("t1", false);
    let mut early = from.clone();
    early.set(0, 0, 4);
    let s = hub.subscribe(&r2, &topics, Some(&early));
    assert!(matches!(s.owed, Owed::Resync(_)), "{:?}", s.owed);
    // One more event pushes 0/5 out: the first cursor still works (it saw 0/5), the
    // starting position does not.
    hub.publish(&at("t1", 1, 2, &mut position));
    let r3 = hub.register("t1", false);
    let s = hub.subscribe(&r3, &topics, Some(&from));
    assert!(
        matches!(s.owed, Owed::Missed(ref m) if m.scan().unwrap().len() == 3),
        "{:?}",
        s.owed
    );
    let r4 = hub.register("t1", false);
    let mut start = Position::default();
    start.set(0, 0, 5);
    let s = hub.subscribe(&r4, &topics, Some(&start));
    assert!(matches!(s.owed, Owed::Resync(_)), "{:?}", s.owed);
}

fn seen(tenant: &str, device: &str, class: Option<&str>, at: i64) -> Seen {
    Seen {
        tenant_id: tenant.into(),
        device_id: device.into(),
        device_class: class.map(str::to_string),
        last_seen: at,
    }
}

/// The (device, last seen) pairs of the `last_seen` messages waiting for `r`.
fn last_seen_of(r: &mut Registration) -> Vec<Vec<(String, i64)>> {
    let mut out = Vec::new();
    while let Ok(e) = r.events.try_recv() {
        assert_eq!(e.kind, Kind::LastSeen);
        assert!(e.source.is_none());
        let m: serde_json::Value = serde_json::from_str(e.json.as_str()).unwrap();
        assert_eq!(m["type"], "last_seen");
        assert!(m.get("cursor").is_none(), "{m}");
        let mut got: Vec<(String, i64)> = m["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    format!(
                        "{}/{}",
                        d["tenant_id"].as_str().unwrap(),
                        d["device_id"].as_str().unwrap()
                    ),
                    d["last_seen"].as_i64().unwrap(),
                )
            })
            .collect();
        got.sort();
        out.push(got);
    }
    out
}

#[test]
fn last_seen_times_are_batched_per_tick_by_tenant_and_topic() {
    let hub = Hub::new(10, 100, usize::MAX);
    // Nobody listens: nothing is kept.
    hub.note_last_seen(seen("t1", "a", None, 1));
    assert!(hub.seen.lock().unwrap().is_empty());

    let mut tenant = hub.register("t1", false);
    let mut device = hub.register("t1", false);
    let mut class = hub.register("t1", false);
    let mut status = hub.register("t1", false);
    let mut other = hub.register("t2", false);
    let mut admin = hub.register("ops", true);
    hub.subscribe(&tenant, &[Topic::Tenant].into(), None);
    hub.subscribe(&device, &[Topic::Device("b".into())].into(), None);
    hub.subscribe(
        &class,
        &[Topic::Class("pump".into()), Topic::Device("a".into())].into(),
        None,
    );
    hub.subscribe(&status, &[Topic::Status].into(), None);
    hub.subscribe(&other, &[Topic::Tenant, Topic::LastSeen].into(), None);
    hub.subscribe(&admin, &[Topic::LastSeen].into(), None);

    hub.note_last_seen(seen("t1", "a", Some("pump"), 10));
    hub.note_last_seen(seen("t1", "b", None, 20));
    // Superseded within the tick: only the latest goes out; an older one changes nothing.
    hub.note_last_seen(seen("t1", "b", None, 25));
    hub.note_last_seen(seen("t1", "b", None, 21));
    hub.note_last_seen(seen("t3", "c", None, 30));
    hub.send_last_seen();

    let a = ("t1/a".to_string(), 10);
    let b = ("t1/b".to_string(), 25);
    let c = ("t3/c".to_string(), 30);
    assert_eq!(last_seen_of(&mut tenant), [vec![a.clone(), b.clone()]]);
    assert_eq!(last_seen_of(&mut device), [vec![b.clone()]]);
    assert_eq!(
        last_seen_of(&mut class),
        [vec![a.clone()]],
        "once, by class and id"
    );
    assert!(
        last_seen_of(&mut status).is_empty(),
        "status is transitions only"
    );
    assert!(
        last_seen_of(&mut other).is_empty(),
        "another tenant's are never sent"
    );
    assert_eq!(last_seen_of(&mut admin), [vec![a, b, c]]);
    // Not events: nothing in the resume ring, no sequence used.
    assert_eq!(hub.published(), 0);
    assert_eq!(hub.recent().held, 0);
    // Nothing moved since: no message.
    hub.send_last_seen();
    assert!(last_seen_of(&mut tenant).is_empty());
}

#[test]
fn a_client_whose_queue_is_full_of_events_is_struck_off_by_a_last_seen_batch_too() {
    let hub = Hub::new(1, 0, usize::MAX);
    let r = hub.register("t1", false);
    hub.subscribe(&r, &[Topic::Tenant].into(), None);
    hub.publish(&event("t1", Kind::Status));
    hub.note_last_seen(seen("t1", "d", None, 1));
    hub.send_last_seen();
    assert!(r.slow.load(Ordering::Relaxed));
}

#[test]
fn the_ring_keeps_under_its_byte_bound_and_raises_the_floor_past_what_it_let_go() {
    let big = "x".repeat(10_000);
    let hub = Hub::new(100, 1_000, 100_000);
    let mut position = Position::default();
    position.set(0, 0, 0);
    hub.start_at(&position);
    for offset in 0..50 {
        let e = at("t1", 0, offset, &mut position);
        hub.publish(&Arc::new(Event {
            json: big.clone().into(),
            tenant: e.tenant.clone(),
            device: e.device.clone(),
            class: None,
            kind: e.kind,
            cursor: Arc::clone(&e.cursor),
            source: e.source,
            read_at: e.read_at,
        }));
    }
    let recent = hub.recent();
    assert!(recent.bytes <= 100_000, "{} bytes", recent.bytes);
    let each = recent.bytes / recent.held;
    assert!(each > 10_000);
    assert_eq!(recent.held, 100_000 / each, "as many as fit");
    assert_eq!(recent.published, 50);
    // What fell off is owed no more: a cursor from before it resyncs.
    let mut old = Position::default();
    old.set(0, 0, 1);
    assert!(recent.chunks_after(&old).is_err());
    let mut late = Position::default();
    late.set(0, 0, 48);
    let chunks = recent.chunks_after(&late).unwrap();
    let owed: usize = chunks.iter().map(|(c, skip)| c.len() - skip).sum();
    assert_eq!(owed, recent.held);
}
