//! Rankings: a learner's points in a period are the sum, over topics, of their best current score
//! on that topic among lectures finished in the period. Repeating one topic does not add points;
//! teaching more topics well does. Ties share a rank (1, 2, 2, 4).
//!
//! [`RankingIndex`] holds every graded lecture's (learner, topic, day, score) and the boards
//! built from them, sorted, so a page or a learner's standing is a binary search away. Boards are
//! built on first use for a (period, scope, days) key and kept up to date as grades arrive;
//! a board for days that are over (yesterday's rolling window) is dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jiff::ToSpan;
use jiff::civil::{Date, Weekday};
use uuid::Uuid;

/// The time a ranking covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    /// The current calendar week, Monday to Sunday.
    Week,
    /// The last 30 days, today included.
    Month,
    All,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Week, Period::Month, Period::All];

    pub const fn as_str(self) -> &'static str {
        match self {
            Period::Week => "week",
            Period::Month => "month",
            Period::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        Period::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The first and last day the period covers on `today` (`None`: all time).
    pub fn days(self, today: Date) -> Option<(Date, Date)> {
        match self {
            Period::Week => {
                let back = i64::from(today.weekday().to_monday_zero_offset());
                let monday = today.checked_sub(back.days()).unwrap_or(today);
                let sunday = monday.checked_add(6.days()).unwrap_or(today);
                debug_assert_eq!(monday.weekday(), Weekday::Monday);
                Some((monday, sunday))
            }
            Period::Month => Some((today.checked_sub(29.days()).unwrap_or(today), today)),
            Period::All => None,
        }
    }
}

/// Which learners' topics a ranking counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Overall,
    Major(String),
    Subject(String),
}

/// A board: one (period, scope) ranking over fixed days.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BoardKey {
    pub period: Period,
    pub scope: Scope,
    pub days: Option<(Date, Date)>,
}

impl BoardKey {
    pub fn new(period: Period, scope: Scope, today: Date) -> BoardKey {
        BoardKey {
            period,
            scope,
            days: period.days(today),
        }
    }
}

/// A learner on a board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    points: u32,
    user: Uuid,
    /// Topics that make up the points (shown, not ordered by).
    topics: u32,
}

impl Slot {
    /// Board order: most points first, then by learner id (stable for paging).
    fn key(&self) -> (std::cmp::Reverse<u32>, Uuid) {
        (std::cmp::Reverse(self.points), self.user)
    }
}

#[derive(Debug, Clone, Default)]
struct Board {
    slots: Vec<Slot>,
}

impl Board {
    /// The competition rank of a score on this board (1 + how many have more).
    fn rank_of(&self, points: u32) -> u32 {
        self.slots.partition_point(|s| s.points > points) as u32 + 1
    }

    fn find(&self, slot: Slot) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&slot.key(), Slot::key)
    }
}

/// A row of a ranking page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    pub rank: u32,
    pub user_id: Uuid,
    pub name: String,
    pub points: u32,
    /// Topics that contribute points.
    pub topics: u32,
}

/// Where a learner stands on a board.
#[derive(Debug, Clone, PartialEq)]
pub struct Standing {
    /// `None` with no points (not ranked).
    pub rank: Option<u32>,
    pub points: u32,
    /// Ranked learners on the board.
    pub total: u32,
    /// `rank / total` as a percentage, one decimal: 12.0 means "top 12%".
    pub percentile: Option<f64>,
}

/// A learner whose place on a board changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub board: BoardKey,
    pub user_id: Uuid,
    pub name: String,
    pub points: u32,
    /// `None`: left the board (no points).
    pub rank: Option<u32>,
    pub previous_rank: Option<u32>,
    pub total: u32,
}

#[derive(Debug, Clone)]
struct GradedRef {
    lecture: Uuid,
    topic: Arc<str>,
    day: Date,
    score: u8,
}

#[derive(Debug, Clone, Default)]
struct Learner {
    name: String,
    graded: Vec<GradedRef>,
}

/// Every graded lecture and the boards built from them.
#[derive(Debug, Default)]
pub struct RankingIndex {
    learners: HashMap<Uuid, Learner>,
    /// Topic → (major, subject).
    topics: HashMap<Arc<str>, (Arc<str>, Arc<str>)>,
    boards: BTreeMap<BoardKey, Board>,
}

impl RankingIndex {
    pub fn new() -> RankingIndex {
        RankingIndex::default()
    }

    /// Learners with at least one graded lecture.
    pub fn learners(&self) -> usize {
        self.learners
            .values()
            .filter(|l| !l.graded.is_empty())
            .count()
    }

    /// Sets where a topic belongs. Boards are rebuilt, since a topic may have moved.
    pub fn set_topic(&mut self, topic: &str, major: &str, subject: &str) {
        let entry = (Arc::<str>::from(major), Arc::<str>::from(subject));
        if self.topics.get(topic) != Some(&entry) {
            self.topics.insert(Arc::from(topic), entry);
            self.boards.clear();
        }
    }

    /// Sets a learner's name (no change to any ranking).
    pub fn set_name(&mut self, user: Uuid, name: &str) {
        let learner = self.learners.entry(user).or_default();
        if learner.name != name {
            learner.name = name.to_owned();
        }
    }

    /// Records a lecture's current score (a re-grade replaces it) and moves its learner on every
    /// built board. Returns the moves.
    pub fn set_grade(
        &mut self,
        user: Uuid,
        lecture: Uuid,
        topic: &str,
        day: Date,
        score: u8,
    ) -> Vec<Change> {
        let topic: Arc<str> = self
            .topics
            .get_key_value(topic)
            .map_or_else(|| Arc::from(topic), |(k, _)| k.clone());
        let learner = self.learners.entry(user).or_default();
        let graded = GradedRef {
            lecture,
            topic,
            day,
            score,
        };
        match learner.graded.iter_mut().find(|g| g.lecture == lecture) {
            Some(existing) => *existing = graded,
            None => learner.graded.push(graded),
        }
        self.reposition(user)
    }

    /// Takes an erased learner off every board (everyone below moves up) and forgets them.
    /// Returns the moves.
    pub fn remove_learner(&mut self, user: Uuid) -> Vec<Change> {
        let Some(learner) = self.learners.get_mut(&user) else {
            return Vec::new();
        };
        learner.graded.clear();
        let changes = self.reposition(user);
        self.learners.remove(&user);
        changes
    }

    /// Recomputes a learner's points on every built board and moves them.
    fn reposition(&mut self, user: Uuid) -> Vec<Change> {
        let mut changes = Vec::new();
        let name = self.name(user);
        let keys: Vec<BoardKey> = self.boards.keys().cloned().collect();
        for key in keys {
            let (points, topics) = self.points(user, &key);
            let board = self.boards.get_mut(&key).expect("listed");
            let old = board.slots.iter().position(|s| s.user == user);
            let old_points = old.map(|i| board.slots[i].points);
            if old_points == Some(points) {
                // Same place; a topic may have joined with no points.
                board.slots[old.expect("has points")].topics = topics;
                continue;
            }
            if old.is_none() && points == 0 {
                continue;
            }
            let previous_rank = old_points.map(|p| board.rank_of(p));
            if let Some(i) = old {
                board.slots.remove(i);
            }
            let mut rank = None;
            if points > 0 {
                let slot = Slot {
                    points,
                    user,
                    topics,
                };
                let at = board.find(slot).unwrap_or_else(|at| at);
                board.slots.insert(at, slot);
                rank = Some(board.rank_of(points));
            }
            changes.push(Change {
                board: key,
                user_id: user,
                name: name.clone(),
                points,
                rank,
                previous_rank,
                total: board.slots.len() as u32,
            });
        }
        changes
    }

    fn name(&self, user: Uuid) -> String {
        self.learners
            .get(&user)
            .map(|l| l.name.clone())
            .unwrap_or_default()
    }

    fn in_scope(&self, topic: &str, scope: &Scope) -> bool {
        match scope {
            Scope::Overall => true,
            Scope::Major(m) => self
                .topics
                .get(topic)
                .is_some_and(|(major, _)| **major == **m),
            Scope::Subject(s) => self
                .topics
                .get(topic)
                .is_some_and(|(_, subject)| **subject == **s),
        }
    }

    /// A learner's points on a board and how many topics make them up.
    fn points(&self, user: Uuid, key: &BoardKey) -> (u32, u32) {
        let Some(learner) = self.learners.get(&user) else {
            return (0, 0);
        };
        let best = best_per_topic(
            learner
                .graded
                .iter()
                .filter(|g| self.in_scope(&g.topic, &key.scope))
                .map(|g| (&*g.topic, g.day, g.score)),
            key.days,
        );
        let points = best.values().map(|s| u32::from(*s)).sum();
        (points, best.len() as u32)
    }

    /// Builds a board if it is not built yet; drops boards of the same period and scope for
    /// days that have passed.
    pub fn ensure(&mut self, key: &BoardKey) {
        if self.boards.contains_key(key) {
            return;
        }
        // Drop boards of the same period and scope for earlier days (a request still on
        // yesterday's key right after midnight must not drop today's board).
        self.boards
            .retain(|k, _| !(k.period == key.period && k.scope == key.scope && k.days < key.days));
        let mut slots: Vec<Slot> = self
            .learners
            .keys()
            .filter_map(|&user| {
                let (points, topics) = self.points(user, key);
                (points > 0).then_some(Slot {
                    points,
                    user,
                    topics,
                })
            })
            .collect();
        slots.sort_unstable_by_key(Slot::key);
        self.boards.insert(key.clone(), Board { slots });
    }

    /// Whether any topic belongs to this major or subject (boards exist only for real scopes).
    pub fn knows(&self, scope: &Scope) -> bool {
        match scope {
            Scope::Overall => true,
            Scope::Major(m) => self.topics.values().any(|(major, _)| **major == **m),
            Scope::Subject(s) => self.topics.values().any(|(_, subject)| **subject == **s),
        }
    }

    /// Whether a board is built (reading needs it built; see [`RankingIndex::ensure`]).
    pub fn is_built(&self, key: &BoardKey) -> bool {
        self.boards.contains_key(key)
    }

    /// Up to `limit` rows after the cursor `(points, user)` (the last row of the previous page).
    /// `None` if the board is not built.
    pub fn page(
        &self,
        key: &BoardKey,
        after: Option<(u32, Uuid)>,
        limit: usize,
    ) -> Option<Vec<Ranked>> {
        let board = self.boards.get(key)?;
        let start = match after {
            Some((points, user)) => board
                .slots
                .partition_point(|s| s.key() <= (std::cmp::Reverse(points), user)),
            None => 0,
        };
        let rows = board.slots[start..]
            .iter()
            .take(limit)
            .map(|slot| Ranked {
                rank: board.rank_of(slot.points),
                user_id: slot.user,
                name: self.name(slot.user),
                points: slot.points,
                topics: slot.topics,
            })
            .collect();
        Some(rows)
    }

    /// Where a learner stands. `None` if the board is not built.
    pub fn standing(&self, key: &BoardKey, user: Uuid) -> Option<Standing> {
        let board = self.boards.get(key)?;
        let total = board.slots.len() as u32;
        let (points, _) = self.points(user, key);
        let rank = (points > 0).then(|| board.rank_of(points));
        Some(Standing {
            rank,
            points,
            total,
            percentile: rank.map(|r| percentile(r, total)),
        })
    }

    /// Ranked learners on a board. `None` if not built.
    pub fn total(&self, key: &BoardKey) -> Option<u32> {
        self.boards.get(key).map(|b| b.slots.len() as u32)
    }
}

/// The best score per topic among `(topic, day, score)` grades on days in `days` (inclusive;
/// `None`: all time).
pub fn best_per_topic<'a>(
    grades: impl IntoIterator<Item = (&'a str, Date, u8)>,
    days: Option<(Date, Date)>,
) -> BTreeMap<&'a str, u8> {
    let mut best: BTreeMap<&str, u8> = BTreeMap::new();
    for (topic, day, score) in grades {
        if days.is_none_or(|(from, to)| day >= from && day <= to) {
            let b = best.entry(topic).or_default();
            *b = (*b).max(score);
        }
    }
    best
}

/// `rank / total` as a percentage rounded up to one decimal (never 0: the first of 10,000 is in
/// the top 0.1%).
pub fn percentile(rank: u32, total: u32) -> f64 {
    let total = total.max(rank).max(1);
    let p = f64::from(rank) * 100.0 / f64::from(total);
    ((p * 10.0).ceil() / 10.0).max(0.1)
}

/// The sentence under a learner's standing, in Korean (`ko`) or English.
pub fn standing_message(standing: &Standing, period: Period, korean: bool) -> String {
    let when = match (period, korean) {
        (Period::Week, false) => "this week",
        (Period::Month, false) => "in the last 30 days",
        (Period::All, false) => "of all time",
        (Period::Week, true) => "이번 주",
        (Period::Month, true) => "최근 30일",
        (Period::All, true) => "전체 기간",
    };
    let top = |p: f64| {
        if p >= 10.0 {
            format!("{}", p.ceil() as u32)
        } else {
            format!("{p:.1}")
        }
    };
    match (standing.rank, standing.percentile, korean) {
        (Some(rank), Some(p), false) => format!(
            "You are in the top {}% {when}: rank {rank} of {} with {} points.",
            top(p),
            standing.total,
            standing.points
        ),
        (Some(rank), Some(p), true) => format!(
            "{when} 상위 {}%예요! {}명 중 {rank}위, {}점이에요.",
            top(p),
            standing.total,
            standing.points
        ),
        (_, _, false) => format!(
            "Not ranked {when} yet: teach a topic and get it graded to join {} learners.",
            standing.total
        ),
        (_, _, true) => format!(
            "{when} 아직 순위가 없어요. 주제를 하나 가르치고 평가를 받으면 {}명과 함께 순위에 올라요.",
            standing.total
        ),
    }
}
