//! The catalogue over HTTP, on every backend.

use serde_json::Value;
use teachback_projections::catalog::CatalogView;

use crate::support::{TestDb, spawn_app};

crate::on_both_backends!(
    the_starter_catalogue_is_served_as_a_tree_and_republished_idempotently_on_restart,
);

async fn the_starter_catalogue_is_served_as_a_tree_and_republished_idempotently_on_restart(
    db: &TestDb,
) {
    let app = spawn_app(db).await;
    let catalog: Value = app.get_json("/api/v1/catalog", None).await;
    let majors = catalog["majors"].as_array().unwrap();
    assert!(majors.len() >= 3);
    let topics: Vec<&Value> = majors
        .iter()
        .flat_map(|m| m["subjects"].as_array().unwrap())
        .flat_map(|s| s["topics"].as_array().unwrap())
        .collect();
    assert!(topics.len() >= 30, "{}", topics.len());
    for t in &topics {
        for lang in ["ko", "en"] {
            assert!(
                t["title"][lang].as_str().is_some_and(|s| !s.is_empty()),
                "{t}"
            );
            assert!(
                t["keyConcepts"][lang]
                    .as_array()
                    .is_some_and(|k| !k.is_empty()),
                "{t}"
            );
        }
    }

    let tcp: Value = app
        .get_json("/api/v1/topics/cs.networking.tcp-vs-udp", None)
        .await;
    assert_eq!(tcp["title"]["ko"], "TCP와 UDP");
    assert_eq!(tcp["major"]["id"], "cs");
    let missing = app
        .http
        .get(app.url("/api/v1/topics/no.such.topic"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"]["code"],
        "topic_not_found"
    );

    // The read model equals a fold of the log.
    let events = app.state.store.read_all(0, 10_000, None).await.unwrap();
    let mut view = CatalogView::default();
    for e in &events {
        view.apply(e).unwrap();
    }
    assert_eq!(view.topics.len(), topics.len());

    // A restart publishes the same catalogue again: nothing new is appended.
    let published = events
        .iter()
        .filter(|e| e.event_type == "TopicPublished")
        .count();
    assert_eq!(published, topics.len());
    let again = spawn_app(db).await;
    let after = again.state.store.read_all(0, 10_000, None).await.unwrap();
    assert_eq!(
        after.len(),
        events.len(),
        "a restart republished the catalogue"
    );
}
