//! kube-runtime's watcher and reflector against the fake: initial list, events, reconnect
//! after cut watches, re-list after compaction (in-stream 410), bookmarks, streaming lists.

mod common;

use common::{eventually, service, start, within};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::reflector;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use std::collections::BTreeSet;
use std::pin::Pin;

type Events = Pin<Box<dyn Stream<Item = Result<Event<Service>, watcher::Error>> + Send>>;

fn name(s: &Service) -> String {
    s.metadata.name.clone().unwrap()
}

/// Next non-error event (errors are expected around cuts and 410s; they are counted).
async fn next(events: &mut Events, errors: &mut Vec<String>) -> Event<Service> {
    loop {
        match within("watcher event", events.next())
            .await
            .expect("watcher stream ended")
        {
            Ok(ev) => return ev,
            Err(e) => errors.push(e.to_string()),
        }
    }
}

/// Expect Init, InitApply for exactly `names`, InitDone.
async fn expect_init(events: &mut Events, errors: &mut Vec<String>, names: &[&str]) {
    assert!(
        matches!(next(events, errors).await, Event::Init),
        "expected Init"
    );
    let mut got = BTreeSet::new();
    loop {
        match next(events, errors).await {
            Event::InitApply(s) => assert!(got.insert(name(&s))),
            Event::InitDone => break,
            other => panic!("unexpected event during init: {other:?}"),
        }
    }
    assert_eq!(
        got,
        names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
}

async fn expect_apply(events: &mut Events, errors: &mut Vec<String>, want: &str) {
    match next(events, errors).await {
        Event::Apply(s) => assert_eq!(name(&s), want),
        other => panic!("expected Apply({want}), got {other:?}"),
    }
}

#[tokio::test]
async fn watcher_lists_watches_reconnects_and_relists_after_compaction() {
    let f = start().await;
    let api: Api<Service> = Api::namespaced(f.client.clone(), "default");
    for n in ["a", "b"] {
        api.create(&PostParams::default(), &service("default", n, json!({})))
            .await
            .unwrap();
    }
    let mut events: Events = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    let mut errors = Vec::new();
    expect_init(&mut events, &mut errors, &["a", "b"]).await;
    assert_eq!(
        f.server.list_count("services"),
        1,
        "default config uses list+watch"
    );

    api.create(&PostParams::default(), &service("default", "c", json!({})))
        .await
        .unwrap();
    expect_apply(&mut events, &mut errors, "c").await;
    f.server.delete::<Service>(Some("default"), "a").unwrap();
    match next(&mut events, &mut errors).await {
        Event::Delete(s) => assert_eq!(name(&s), "a"),
        other => panic!("expected Delete(a), got {other:?}"),
    }

    // Cut: the watcher re-watches from its resourceVersion; nothing is missed or replayed.
    let watches = f.server.watch_count("services");
    f.server.cut_watches();
    f.server
        .create(&service("default", "d", json!({})))
        .unwrap();
    expect_apply(&mut events, &mut errors, "d").await;
    assert!(
        f.server.watch_count("services") > watches,
        "re-watched after the cut"
    );
    assert_eq!(
        f.server.list_count("services"),
        1,
        "no re-list after a plain cut"
    );
    f.server
        .create(&service("default", "e", json!({})))
        .unwrap();
    expect_apply(&mut events, &mut errors, "e").await;

    // Compaction + cut: the re-watch gets an in-stream 410, the watcher re-lists.
    f.server.compact();
    f.server.cut_watches();
    expect_init(&mut events, &mut errors, &["b", "c", "d", "e"]).await;
    assert_eq!(f.server.list_count("services"), 2, "re-listed after 410");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("410") || e.contains("Expired")),
        "saw the 410: {errors:?}"
    );
    let watch_replies: Vec<u16> = f
        .server
        .requests()
        .iter()
        .filter(|r| r.watch)
        .map(|r| r.code)
        .collect();
    assert!(
        watch_replies.iter().all(|c| *c == 200),
        "410 is in-stream, never an HTTP reply: {watch_replies:?}"
    );
    f.server
        .create(&service("default", "f", json!({})))
        .unwrap();
    expect_apply(&mut events, &mut errors, "f").await;
}

#[tokio::test]
async fn streaming_list_watcher_gets_initial_events_and_end_bookmark() {
    let f = start().await;
    let api: Api<Service> = Api::namespaced(f.client.clone(), "default");
    f.server
        .create(&service("default", "a", json!({})))
        .unwrap();
    let mut events: Events =
        watcher::watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut errors = Vec::new();
    expect_init(&mut events, &mut errors, &["a"]).await;
    assert_eq!(
        f.server.list_count("services"),
        0,
        "streaming lists do not LIST"
    );
    let w = f.server.requests().into_iter().find(|r| r.watch).unwrap();
    assert!(w.query.contains("sendInitialEvents=true"), "{}", w.query);
    f.server
        .create(&service("default", "b", json!({})))
        .unwrap();
    expect_apply(&mut events, &mut errors, "b").await;
    f.server.compact();
    f.server.cut_watches();
    expect_init(&mut events, &mut errors, &["a", "b"]).await;
    assert!(
        errors.iter().any(|e| e.contains("Expired")),
        "the re-watch got the in-stream 410: {errors:?}"
    );
}

#[tokio::test]
async fn raw_watch_bookmarks_timeout_and_in_stream_410() {
    let f = start().await;
    let api: Api<Service> = Api::namespaced(f.client.clone(), "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    let mut w = api
        .watch(
            &WatchParams {
                bookmarks: true,
                ..WatchParams::default()
            }
            .timeout(3),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    f.server
        .create(&service("default", "a", json!({})))
        .unwrap();
    let mut saw_added = false;
    let mut bookmarks = 0;
    while let Some(ev) = within("watch event", w.next()).await {
        match ev.unwrap() {
            WatchEvent::Added(s) => {
                assert_eq!(name(&s), "a");
                saw_added = true;
            }
            WatchEvent::Bookmark(b) => {
                bookmarks += 1;
                assert!(b.metadata.resource_version.parse::<u64>().unwrap() >= rv.parse().unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        saw_added && bookmarks >= 2,
        "added={saw_added} bookmarks={bookmarks}"
    );
    // The stream ended cleanly at timeoutSeconds (the loop above exited).

    // Label selectors on a watch: an object that stops matching is DELETED for the watcher.
    let mut w = api
        .watch(&WatchParams::default().labels("app=web"), "0")
        .await
        .unwrap()
        .boxed();
    f.server
        .create(&service("default", "web", json!({"app": "web"})))
        .unwrap();
    f.server
        .create(&service("default", "other", json!({"app": "other"})))
        .unwrap();
    let mut s = f.server.get::<Service>(Some("default"), "web").unwrap();
    s.metadata.labels = Some([("app".to_string(), "gone".to_string())].into());
    f.server.replace(&s).unwrap();
    let kinds: Vec<String> = {
        let mut out = Vec::new();
        while out.len() < 2 {
            match within("selector watch", w.next()).await.unwrap().unwrap() {
                WatchEvent::Added(s) => out.push(format!("ADDED {}", name(&s))),
                WatchEvent::Modified(s) => out.push(format!("MODIFIED {}", name(&s))),
                WatchEvent::Deleted(s) => out.push(format!("DELETED {}", name(&s))),
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => panic!("{e:?}"),
            }
        }
        out
    };
    assert_eq!(kinds, ["ADDED web", "DELETED web"]);

    // Too old: an in-stream ERROR with a 410 Status, HTTP 200.
    f.server.compact();
    let mut w = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match within("410", w.next()).await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    assert!(
        within("end", w.next()).await.is_none(),
        "stream ends after the 410"
    );
}

#[tokio::test]
async fn reflector_store_converges_to_live_objects() {
    let f = start().await;
    let api: Api<Service> = Api::all(f.client.clone());
    for i in 0..5 {
        f.server
            .create(&service("default", &format!("s{i}"), json!({})))
            .unwrap();
    }
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher::watcher(api, watcher::Config::default()));
    let task = tokio::spawn(async move {
        let mut s = stream.boxed();
        while s.next().await.is_some() {}
    });
    let live = |srv: &fake_apiserver::FakeApiServer| -> BTreeSet<String> {
        srv.list::<Service>().iter().map(name).collect()
    };
    let cached = |r: &reflector::Store<Service>| -> BTreeSet<String> {
        r.state().iter().map(|s| name(s)).collect()
    };
    eventually("initial sync", || async {
        cached(&reader) == live(&f.server)
    })
    .await;

    f.server.delete::<Service>(Some("default"), "s0").unwrap();
    f.server.cut_watches();
    f.server.create(&service("other", "t1", json!({}))).unwrap();
    eventually("after cut", || async { cached(&reader) == live(&f.server) }).await;

    let lists = f.server.list_count("services");
    f.server.delete::<Service>(Some("default"), "s1").unwrap();
    eventually("s1 gone", || async { !cached(&reader).contains("s1") }).await;
    f.server.compact();
    f.server.cut_watches();
    eventually("re-listed", || async {
        f.server.list_count("services") > lists
    })
    .await;
    f.server.create(&service("other", "t2", json!({}))).unwrap();
    f.server.delete::<Service>(Some("default"), "s2").unwrap();
    eventually("after compaction", || async {
        cached(&reader) == live(&f.server)
    })
    .await;
    assert_eq!(
        cached(&reader),
        ["s3", "s4", "t1", "t2"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    task.abort();
}
