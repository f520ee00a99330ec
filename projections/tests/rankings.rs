//! Rankings: points, ranks, pages, standings and moves on built boards.

use jiff::civil::{Date, date};
use teachback_projections::rankings::{
    BoardKey, Change, Period, RankingIndex, Scope, Standing, percentile, standing_message,
};
use uuid::Uuid;

/// Wednesday 13 March 2024: its week is Monday 11 – Sunday 17 March.
const TODAY: Date = date(2024, 3, 13);

fn user(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

/// An index with topics in two majors: t.os1 and t.os2 (cs/cs.os), t.net (cs/cs.net) and
/// t.alg (math/math.alg); learner `n` is named `u<n>`.
fn index() -> RankingIndex {
    let mut index = RankingIndex::new();
    index.set_topic("t.os1", "cs", "cs.os");
    index.set_topic("t.os2", "cs", "cs.os");
    index.set_topic("t.net", "cs", "cs.net");
    index.set_topic("t.alg", "math", "math.alg");
    index
}

/// Records grades `(learner, topic, day, score)`, each a lecture of its own, named after its
/// learner.
fn grade(index: &mut RankingIndex, grades: &[(u128, &str, Date, u8)]) {
    for (n, &(learner, topic, day, score)) in grades.iter().enumerate() {
        index.set_name(user(learner), &format!("u{learner}"));
        index.set_grade(user(learner), lecture(n as u128), topic, day, score);
    }
}

fn lecture(n: u128) -> Uuid {
    Uuid::from_u128(10_000 + n)
}

fn board(period: Period, scope: Scope) -> BoardKey {
    BoardKey::new(period, scope, TODAY)
}

fn all_time() -> BoardKey {
    board(Period::All, Scope::Overall)
}

/// The board built, as (learner, rank, points) rows.
fn rows(index: &mut RankingIndex, key: &BoardKey) -> Vec<(u128, u32, u32)> {
    index.ensure(key);
    index
        .page(key, None, 100)
        .expect("built")
        .iter()
        .map(|r| (r.user_id.as_u128(), r.rank, r.points))
        .collect()
}

#[test]
fn points_are_the_sum_over_topics_of_the_best_score_on_each() {
    // given: learner 1 teaches t.os1 twice (60, then 90) and t.net (70); learner 2 t.os1 (95)
    let mut index = index();
    grade(
        &mut index,
        &[
            (1, "t.os1", TODAY, 60),
            (1, "t.os1", TODAY, 90),
            (1, "t.net", TODAY, 70),
            (2, "t.os1", TODAY, 95),
        ],
    );
    index.ensure(&all_time());

    // when
    let page = index.page(&all_time(), None, 10).expect("built");

    // then: 90 + 70 = 160 over 2 topics; the repeated topic counts its best once
    let summary: Vec<_> = page
        .iter()
        .map(|r| (r.user_id, r.name.as_str(), r.rank, r.points, r.topics))
        .collect();
    assert_eq!(
        summary,
        [(user(1), "u1", 1, 160, 2), (user(2), "u2", 2, 95, 1)]
    );
    assert_eq!(index.learners(), 2);
}

#[test]
fn tied_learners_share_a_rank_and_the_next_rank_skips_past_them() {
    // given: 90, 80, 80, 70 (the tied pair is ordered by learner id)
    let mut index = index();
    grade(
        &mut index,
        &[
            (4, "t.os1", TODAY, 70),
            (3, "t.os1", TODAY, 80),
            (2, "t.os1", TODAY, 80),
            (1, "t.os1", TODAY, 90),
        ],
    );

    // when
    let rows = rows(&mut index, &all_time());

    // then
    assert_eq!(rows, [(1, 1, 90), (2, 2, 80), (3, 2, 80), (4, 4, 70)]);
}

#[test]
fn a_page_continues_exactly_after_its_cursor_without_duplicates_or_gaps() {
    // given: 50, 40, 40, 40, 30, 20, 10: pages of 3 split the three-way tie
    let mut index = index();
    let points = [50, 40, 40, 40, 30, 20, 10];
    let grades: Vec<_> = (1..)
        .zip(points)
        .map(|(n, p)| (n, "t.os1", TODAY, p))
        .collect();
    grade(&mut index, &grades);
    index.ensure(&all_time());

    // when: paging by the last row of each page (at most 5 pages: a cursor that does not
    // advance must fail, not loop)
    let mut pages = Vec::new();
    let mut after = None;
    for _ in 0..5 {
        let page = index.page(&all_time(), after, 3).expect("built");
        let Some(last) = page.last() else { break };
        after = Some((last.points, last.user_id));
        pages.push(
            page.iter()
                .map(|r| (r.user_id.as_u128(), r.rank))
                .collect::<Vec<_>>(),
        );
    }

    // then
    assert_eq!(
        pages,
        [
            vec![(1, 1), (2, 2), (3, 2)],
            vec![(4, 2), (5, 5), (6, 6)],
            vec![(7, 7)],
        ]
    );
}

#[test]
fn a_standing_gives_the_rank_the_total_and_the_percentile() {
    // given: 90, 80, 80, 70
    let mut index = index();
    grade(
        &mut index,
        &[
            (1, "t.os1", TODAY, 90),
            (2, "t.os1", TODAY, 80),
            (3, "t.os1", TODAY, 80),
            (4, "t.os1", TODAY, 70),
        ],
    );
    index.ensure(&all_time());

    // when
    let second = index.standing(&all_time(), user(3)).expect("built");
    let last = index.standing(&all_time(), user(4)).expect("built");

    // then: 2 / 4 = 50%, 4 / 4 = 100%
    assert_eq!(
        second,
        Standing {
            rank: Some(2),
            points: 80,
            total: 4,
            percentile: Some(50.0),
        }
    );
    assert_eq!((last.rank, last.percentile), (Some(4), Some(100.0)));
    assert_eq!(index.total(&all_time()), Some(4));
}

#[test]
fn a_learner_without_points_on_a_board_is_not_ranked() {
    // given: learner 2 was only graded long ago, learner 3 never
    let mut index = index();
    grade(
        &mut index,
        &[(1, "t.os1", TODAY, 90), (2, "t.os1", date(2023, 1, 2), 80)],
    );
    let week = board(Period::Week, Scope::Overall);
    index.ensure(&week);

    // when
    let (old, never) = (
        index.standing(&week, user(2)),
        index.standing(&week, user(3)),
    );

    // then
    let unranked = Standing {
        rank: None,
        points: 0,
        total: 1,
        percentile: None,
    };
    assert_eq!(old, Some(unranked.clone()));
    assert_eq!(never, Some(unranked));
}

#[test]
fn a_board_not_built_has_no_page_standing_or_total() {
    // given
    let mut index = index();
    grade(&mut index, &[(1, "t.os1", TODAY, 90)]);

    // when / then
    assert!(!index.is_built(&all_time()));
    assert_eq!(index.page(&all_time(), None, 10), None);
    assert_eq!(index.standing(&all_time(), user(1)), None);
    assert_eq!(index.total(&all_time()), None);
}

#[test]
fn percentiles_round_up_to_one_decimal_and_never_reach_zero() {
    // given / when / then: 1/3 = 33.33…% → 33.4; 3/1000 = 0.3%; 1/10 000 = 0.01% → 0.1
    assert_eq!(percentile(1, 3), 33.4);
    assert_eq!(percentile(3, 1_000), 0.3);
    assert_eq!(percentile(1, 10_000), 0.1);
    assert_eq!(percentile(7, 7), 100.0);
    // a rank past the total counts as last
    assert_eq!(percentile(5, 2), 100.0);
}

#[test]
fn the_week_runs_from_monday_to_sunday_of_todays_week() {
    // given: Sunday 17 March 2024 and the Monday after it
    let (sunday, monday) = (date(2024, 3, 17), date(2024, 3, 18));

    // when / then
    assert_eq!(Period::Week.days(sunday), Some((date(2024, 3, 11), sunday)));
    assert_eq!(Period::Week.days(monday), Some((monday, date(2024, 3, 24))));
    assert_eq!(
        Period::Week.days(TODAY),
        Some((date(2024, 3, 11), date(2024, 3, 17)))
    );
}

#[test]
fn the_month_is_the_30_days_ending_today_and_all_time_has_no_days() {
    // given / when / then: 13 Feb – 13 Mar 2024 is 17 days of February (a leap year) + 13
    assert_eq!(Period::Month.days(TODAY), Some((date(2024, 2, 13), TODAY)));
    assert_eq!(Period::All.days(TODAY), None);
    for period in Period::ALL {
        assert_eq!(Period::parse(period.as_str()), Some(period));
    }
    assert_eq!(Period::parse("year"), None);
}

#[test]
fn a_weekly_board_counts_only_lectures_finished_in_this_week() {
    // given: on Sunday 17 March, learner 1 scored 90 the Sunday before and 50 on Monday;
    // learner 2 scored 70 that Sunday
    let sunday = date(2024, 3, 17);
    let mut index = index();
    grade(
        &mut index,
        &[
            (1, "t.os1", date(2024, 3, 10), 90),
            (1, "t.net", date(2024, 3, 11), 50),
            (2, "t.os1", sunday, 70),
        ],
    );

    // when
    let this_week = rows(
        &mut index,
        &BoardKey::new(Period::Week, Scope::Overall, sunday),
    );
    let next_week = rows(
        &mut index,
        &BoardKey::new(Period::Week, Scope::Overall, date(2024, 3, 18)),
    );

    // then
    assert_eq!(this_week, [(2, 1, 70), (1, 2, 50)]);
    assert_eq!(next_week, []);
}

#[test]
fn a_monthly_board_starts_29_days_before_today() {
    // given: learner 1 scored on 12 February, the day before the window; learner 2 on its
    // first day, 13 February
    let mut index = index();
    grade(
        &mut index,
        &[
            (1, "t.os1", date(2024, 2, 12), 90),
            (2, "t.os1", date(2024, 2, 13), 40),
        ],
    );

    // when
    let month = rows(&mut index, &board(Period::Month, Scope::Overall));

    // then
    assert_eq!(month, [(2, 1, 40)]);
}

#[test]
fn a_major_or_subject_board_counts_only_its_topics() {
    // given: learner 1: t.os1 60, t.net 70, t.alg 80; learner 2: t.alg 90; learner 3: a topic
    // with no known place
    let mut index = index();
    grade(
        &mut index,
        &[
            (1, "t.os1", TODAY, 60),
            (1, "t.net", TODAY, 70),
            (1, "t.alg", TODAY, 80),
            (2, "t.alg", TODAY, 90),
            (3, "t.unknown", TODAY, 99),
        ],
    );
    let cs = board(Period::All, Scope::Major("cs".into()));

    // when / then: cs = 60 + 70
    assert_eq!(rows(&mut index, &cs), [(1, 1, 130)]);
    assert_eq!(index.page(&cs, None, 1).expect("built")[0].topics, 2);
    assert_eq!(
        rows(&mut index, &board(Period::All, Scope::Major("math".into()))),
        [(2, 1, 90), (1, 2, 80)]
    );
    assert_eq!(
        rows(
            &mut index,
            &board(Period::All, Scope::Subject("cs.os".into()))
        ),
        [(1, 1, 60)]
    );
    assert_eq!(
        rows(&mut index, &all_time()),
        [(1, 1, 210), (3, 2, 99), (2, 3, 90)]
    );
}

#[test]
fn moving_a_topic_to_another_major_rebuilds_the_boards() {
    // given: a built cs board with learner 1's t.alg grade not on it
    let mut index = index();
    grade(&mut index, &[(1, "t.alg", TODAY, 80)]);
    let cs = board(Period::All, Scope::Major("cs".into()));
    assert_eq!(rows(&mut index, &cs), []);

    // when
    index.set_topic("t.alg", "cs", "cs.alg");

    // then
    assert!(!index.is_built(&cs));
    assert_eq!(rows(&mut index, &cs), [(1, 1, 80)]);
}

#[test]
fn a_new_grade_moves_its_learner_on_the_built_boards_it_counts_on() {
    // given: built all-time and math boards; 90, 80, 70 on cs topics
    let mut index = index();
    grade(
        &mut index,
        &[
            (1, "t.os1", TODAY, 90),
            (2, "t.os1", TODAY, 80),
            (3, "t.os1", TODAY, 70),
        ],
    );
    let math = board(Period::All, Scope::Major("math".into()));
    index.ensure(&all_time());
    index.ensure(&math);

    // when: learner 3 adds 50 on t.net: 120
    let changes = index.set_grade(user(3), lecture(99), "t.net", TODAY, 50);

    // then: only the all-time board moves (t.net is not math); the others move down one
    assert_eq!(
        changes,
        [Change {
            board: all_time(),
            user_id: user(3),
            name: "u3".into(),
            points: 120,
            rank: Some(1),
            previous_rank: Some(3),
            total: 3,
        }]
    );
    assert_eq!(
        rows(&mut index, &all_time()),
        [(3, 1, 120), (1, 2, 90), (2, 3, 80)]
    );
    let first = index.standing(&all_time(), user(1)).expect("built");
    assert_eq!((first.rank, first.total), (Some(2), 3));
    assert_eq!(rows(&mut index, &math), []);
}

#[test]
fn a_first_grade_joins_the_board_below_and_between_others() {
    // given: 90 and 70 on a built board
    let mut index = index();
    grade(
        &mut index,
        &[(1, "t.os1", TODAY, 90), (2, "t.os1", TODAY, 70)],
    );
    index.ensure(&all_time());
    index.set_name(user(5), "newcomer");

    // when
    let changes = index.set_grade(user(5), lecture(99), "t.os1", TODAY, 80);

    // then
    assert_eq!(changes.len(), 1);
    let change = &changes[0];
    assert_eq!(change.name, "newcomer");
    assert_eq!(
        (change.previous_rank, change.rank, change.total),
        (None, Some(2), 3)
    );
    assert_eq!(
        rows(&mut index, &all_time()),
        [(1, 1, 90), (5, 2, 80), (2, 3, 70)]
    );
}

#[test]
fn a_lower_regrade_moves_the_learner_down() {
    // given: 90 (lecture 0), 80, 70
    let mut index = index();
    grade(
        &mut index,
        &[
            (1, "t.os1", TODAY, 90),
            (2, "t.os1", TODAY, 80),
            (3, "t.os1", TODAY, 70),
        ],
    );
    index.ensure(&all_time());

    // when: lecture 0 is re-graded to 60
    let changes = index.set_grade(user(1), lecture(0), "t.os1", TODAY, 60);

    // then
    let moves: Vec<_> = changes
        .iter()
        .map(|c| (c.points, c.previous_rank, c.rank))
        .collect();
    assert_eq!(moves, [(60, Some(1), Some(3))]);
    assert_eq!(
        rows(&mut index, &all_time()),
        [(2, 1, 80), (3, 2, 70), (1, 3, 60)]
    );
}

#[test]
fn a_regrade_to_zero_takes_the_learner_off_the_board() {
    // given
    let mut index = index();
    grade(
        &mut index,
        &[(1, "t.os1", TODAY, 90), (2, "t.os1", TODAY, 80)],
    );
    index.ensure(&all_time());

    // when
    let changes = index.set_grade(user(1), lecture(0), "t.os1", TODAY, 0);

    // then
    let moves: Vec<_> = changes
        .iter()
        .map(|c| (c.points, c.previous_rank, c.rank, c.total))
        .collect();
    assert_eq!(moves, [(0, Some(1), None, 1)]);
    assert_eq!(rows(&mut index, &all_time()), [(2, 1, 80)]);
}

#[test]
fn an_erased_learner_leaves_every_board_and_those_below_move_up() {
    // given
    let mut index = index();
    grade(
        &mut index,
        &[
            (1, "t.os1", TODAY, 90),
            (2, "t.os1", TODAY, 80),
            (3, "t.os1", TODAY, 70),
        ],
    );
    index.ensure(&all_time());

    // when
    let changes = index.remove_learner(user(1));

    // then
    let moves: Vec<_> = changes
        .iter()
        .map(|c| (c.user_id, c.points, c.previous_rank, c.rank, c.total))
        .collect();
    assert_eq!(moves, [(user(1), 0, Some(1), None, 2)]);
    assert_eq!(rows(&mut index, &all_time()), [(2, 1, 80), (3, 2, 70)]);
    assert_eq!(index.learners(), 2);
    // Boards built later do not bring them back.
    let week = board(Period::Week, Scope::Overall);
    index.ensure(&week);
    assert!(rows(&mut index, &week).iter().all(|(u, _, _)| *u != 1));
    assert!(index.remove_learner(user(1)).is_empty());
}

#[test]
fn a_grade_outside_a_boards_days_or_below_a_better_one_does_not_move_it() {
    // given: a built weekly board with learner 1 at 90 on t.os1
    let mut index = index();
    grade(&mut index, &[(1, "t.os1", TODAY, 90)]);
    let week = board(Period::Week, Scope::Overall);
    index.ensure(&week);

    // when: a grade from last week, and a lower one on the same topic this week
    let old = index.set_grade(user(1), lecture(50), "t.net", date(2024, 3, 10), 70);
    let lower = index.set_grade(user(1), lecture(51), "t.os1", TODAY, 40);

    // then
    assert_eq!((old, lower), (vec![], vec![]));
    assert_eq!(rows(&mut index, &week), [(1, 1, 90)]);
}

#[test]
fn building_a_board_for_new_days_drops_the_one_for_days_that_are_over() {
    // given: this week's board and the all-time board
    let mut index = index();
    let (this_week, all) = (board(Period::Week, Scope::Overall), all_time());
    index.ensure(&this_week);
    index.ensure(&all);

    // when
    let next_week = BoardKey::new(Period::Week, Scope::Overall, date(2024, 3, 18));
    index.ensure(&next_week);

    // then
    assert!(!index.is_built(&this_week));
    assert!(index.is_built(&next_week) && index.is_built(&all));
}

#[test]
fn a_rename_shows_on_the_page_without_moving_anyone() {
    // given
    let mut index = index();
    grade(&mut index, &[(1, "t.os1", TODAY, 90)]);
    index.ensure(&all_time());

    // when
    index.set_name(user(1), "renamed");

    // then
    let page = index.page(&all_time(), None, 10).expect("built");
    assert_eq!((page[0].name.as_str(), page[0].rank), ("renamed", 1));
}

#[test]
fn the_standing_message_gives_the_percentage_in_english_and_korean() {
    // given: rank 2 of 4 (50%), and rank 1 of 40 (2.5%)
    let half = Standing {
        rank: Some(2),
        points: 80,
        total: 4,
        percentile: Some(percentile(2, 4)),
    };
    let top = Standing {
        rank: Some(1),
        points: 170,
        total: 40,
        percentile: Some(percentile(1, 40)),
    };

    // when
    let english = standing_message(&half, Period::Week, false);
    let korean = standing_message(&half, Period::Week, true);
    let small = standing_message(&top, Period::Month, false);

    // then
    assert_eq!(
        english,
        "You are in the top 50% this week: rank 2 of 4 with 80 points."
    );
    assert_eq!(korean, "이번 주 상위 50%예요! 4명 중 2위, 80점이에요.");
    assert!(small.contains("top 2.5% in the last 30 days"), "{small}");
}

#[test]
fn the_standing_message_of_an_unranked_learner_invites_them_to_join() {
    // given
    let unranked = Standing {
        rank: None,
        points: 0,
        total: 12,
        percentile: None,
    };

    // when
    let english = standing_message(&unranked, Period::All, false);
    let korean = standing_message(&unranked, Period::All, true);

    // then
    assert!(
        english.starts_with("Not ranked of all time yet"),
        "{english}"
    );
    assert!(english.contains("12 learners") && !english.contains('%'));
    assert!(
        korean.starts_with("전체 기간 아직 순위가 없어요"),
        "{korean}"
    );
    assert!(korean.contains("12명") && !korean.contains('%'));
}
