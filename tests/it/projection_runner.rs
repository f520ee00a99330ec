//! The projection runner: checkpoints, and two runners of one projection (two instances).

use std::sync::Arc;
use std::time::{Duration, Instant};

use teachback::projection::users::{UsersProjector, all_users};
use teachback::projection::{self, load_checkpoint};
use teachback::users;
use teachback_events::Metadata;
use teachback_projections::users::UsersView;

use crate::support::{TestDb, store_on};

crate::on_both_backends!(two_runners_of_one_projection_end_exactly_where_a_fold_of_the_log_ends);

async fn two_runners_of_one_projection_end_exactly_where_a_fold_of_the_log_ends(db: &TestDb) {
    let store = db.store().await;
    // Two instances: each its own pool, store and runner of the same projection.
    let other_db = db.reconnect().await;
    let other_store = store_on(other_db.clone()).await;
    let a = projection::spawn(
        db.db.clone(),
        store.clone(),
        Arc::new(UsersProjector::default()),
    )
    .await
    .unwrap();
    let b = projection::spawn(other_db, other_store, Arc::new(UsersProjector::default()))
        .await
        .unwrap();

    let mut ids = Vec::new();
    for i in 0..60 {
        let r = users::register_device(&store, Metadata::default())
            .await
            .unwrap();
        if i % 3 == 0 {
            users::rename(
                &store,
                r.user_id,
                &format!("runner {i}"),
                Metadata::default(),
            )
            .await
            .unwrap();
        }
        ids.push(r.user_id);
    }
    let head = store.head().await.unwrap();
    assert!(
        a.wait_for(head, Duration::from_secs(30)).await
            || b.wait_for(head, Duration::from_secs(30)).await
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while load_checkpoint(&db.db, teachback_projections::users::NAME)
        .await
        .unwrap()
        < head
    {
        assert!(
            Instant::now() < deadline,
            "the checkpoint did not reach the head"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut view = UsersView::default();
    for e in store.read_all(0, 100_000, None).await.unwrap() {
        view.apply(&e).unwrap();
    }
    let rows = all_users(&db.db).await.unwrap();
    assert_eq!(rows.len(), ids.len());
    for row in rows {
        let expected = &view.users[&row.user_id];
        assert_eq!(
            (&row.name, row.updated_at),
            (&expected.name, expected.updated_at)
        );
    }
}
