//! `teachback audit trail`: everything a learner did and everything done to their data.

use std::time::Duration;

use serde_json::{Value, json};
use teachback_events::RecordedEvent;

use crate::live_support::learner;
use crate::on_both_backends;
use crate::support::{TestDb, spawn_app_with};

on_both_backends!(a_learners_trail_holds_their_events_and_what_was_done_to_their_data_only);

const TEXT: &str = "TCP retransmits lost segments; UDP does not.";
const ADMIN: &str = "audit-test-admin-token-0123456789";

async fn a_learners_trail_holds_their_events_and_what_was_done_to_their_data_only(db: &TestDb) {
    let app = spawn_app_with(db, |c| c.admin_token = Some(ADMIN.to_owned().into())).await;
    let (ana, ben) = (learner(&app).await, learner(&app).await);
    let me: Value = app.get_json("/api/v1/me", Some(&ana)).await;
    let ana_id: uuid::Uuid = me["userId"].as_str().unwrap().parse().unwrap();
    let ben_id = app.get_json("/api/v1/me", Some(&ben)).await["userId"]
        .as_str()
        .unwrap()
        .to_owned();
    let renamed = app
        .http
        .put(app.url("/api/v1/me"))
        .bearer_auth(&ana)
        .json(&json!({"name": "Ana"}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    let lecture = app.graded_text_lecture(&ana, TEXT).await;
    let other = app.graded_text_lecture(&ben, TEXT).await;
    // Done to Ana's data by someone else: an admin re-grade.
    let regraded = app
        .http
        .post(app.url(&format!("/api/v1/admin/lectures/{lecture}/regrade")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(regraded.status(), 202);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let trail = teachback::audit::trail(&app.state.store, ana_id, &|_, _| {})
        .await
        .unwrap();
    let log = app.state.store.read_all(0, 100_000, None).await.unwrap();
    let stream_of =
        |name: String| -> Vec<&RecordedEvent> { log.iter().filter(|e| e.stream == name).collect() };
    let positions: Vec<u64> = trail.iter().map(|e| e.position).collect();
    // Every event of her own stream and of her lecture is there, in log order.
    for event in stream_of(format!("user-{ana_id}"))
        .into_iter()
        .chain(stream_of(format!("lecture-{lecture}")))
    {
        assert!(
            positions.contains(&event.position),
            "{} missing",
            event.event_type
        );
    }
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    // Nothing of Ben's.
    for event in stream_of(format!("user-{ben_id}"))
        .into_iter()
        .chain(stream_of(format!("lecture-{other}")))
    {
        assert!(
            !positions.contains(&event.position),
            "Ben's {} is in Ana's trail",
            event.event_type
        );
    }
    // Who did what: she started her lecture; the re-grade request was not hers.
    let by = |t: &str| -> Vec<&str> {
        trail
            .iter()
            .filter(|e| e.event_type == t)
            .map(|e| e.by)
            .collect()
    };
    assert_eq!(by("LectureStarted"), ["learner"]);
    assert_eq!(by("DeviceRegistered"), ["learner"]);
    assert!(!by("UserRenamed").is_empty() || !by("UsernameClaimed").is_empty());
    let regrade = by("RegradeRequested");
    assert_eq!(regrade.len(), 1);
    assert_ne!(regrade[0], "learner");
    assert!(by("LectureGraded").len() >= 2, "both grades");
}
