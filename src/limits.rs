//! Rate limits, per client IP and per learner.
//!
//! Each limit is "at most N per period": a client may spend the N at once, and then earns one
//! back every period / N (the generic cell rate algorithm, GCRA: one timestamp per key, the
//! *theoretical arrival time*). A refusal does not use up the refusing limit; the learner's
//! limit is checked before the address's, so a refusal by the address has used one of the
//! learner's units.
//!
//! Where the counters live:
//! - on PostgreSQL, in the `rate_limits` table, updated with one atomic statement per check by
//!   the database's clock, so that every instance sharing the database enforces the same limit;
//! - on SQLite (one process), in memory.
//!
//! WebSocket messages are limited per connection, in memory (a connection lives on one
//! instance); see [`MessageGate`].

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use uuid::Uuid;

use crate::db::Db;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// `POST /api/v1/devices`.
    Devices,
    /// `POST /api/v1/auth/refresh`.
    Refresh,
    /// Audio lectures started (live, or for upload).
    Lectures,
    /// Text lectures.
    Text,
    /// Refused `PUT /api/v1/uploads/{id}` attempts.
    Uploads,
    /// Wrong admin tokens.
    Admin,
    /// WebSocket connections (`/api/v1/live`, `/lectures/{id}/watch`).
    Sockets,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::Devices,
        Action::Refresh,
        Action::Lectures,
        Action::Text,
        Action::Uploads,
        Action::Sockets,
        Action::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Devices => "devices",
            Action::Refresh => "refresh",
            Action::Lectures => "lectures",
            Action::Text => "text",
            Action::Uploads => "uploads",
            Action::Sockets => "sockets",
            Action::Admin => "admin",
        }
    }

    /// What the learner is told was too frequent.
    fn what(self) -> &'static str {
        match self {
            Action::Devices => "device registrations",
            Action::Refresh => "token refreshes",
            Action::Lectures => "lecture starts",
            Action::Text => "text lectures",
            Action::Uploads => "uploads",
            Action::Sockets => "WebSocket connections",
            Action::Admin => "wrong admin tokens",
        }
    }
}

/// Whom a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Ip,
    Learner,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Learner => "learner",
        }
    }
}

/// "N per period".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// The time one request earns back.
    fn interval_us(self) -> i64 {
        (self.per.as_micros() as i64 / i64::from(self.count)).max(1)
    }

    fn per_us(self) -> i64 {
        self.per.as_micros() as i64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.per.as_secs();
        let (n, unit) = if secs % 86_400 == 0 {
            (secs / 86_400, "d")
        } else if secs % 3_600 == 0 {
            (secs / 3_600, "h")
        } else if secs % 60 == 0 {
            (secs / 60, "min")
        } else {
            (secs, "s")
        };
        if n == 1 {
            write!(f, "{}/{unit}", self.count)
        } else {
            write!(f, "{}/{n}{unit}", self.count)
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    /// `20/h`, `600/10min`, `50/s`, `1000/d`.
    fn from_str(s: &str) -> Result<Rate, String> {
        let (count, period) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not `<count>/<period>` (like `20/h`)"))?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| format!("`{count}` in `{s}` is not a positive whole number"))?;
        let period = period.trim();
        let digits = period.chars().take_while(char::is_ascii_digit).count();
        let (n, unit) = period.split_at(digits);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("`{period}` in `{s}` has a bad multiple"))?
        };
        let unit_secs = match unit {
            "s" => 1,
            "min" | "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => {
                return Err(format!(
                    "`{unit}` in `{s}` is not a period unit (use s, min, h or d)"
                ));
            }
        };
        Ok(Rate {
            count,
            per: Duration::from_secs(n * unit_secs),
        })
    }
}

/// Every limit in force. Parsed from `TEACHBACK_RATE_LIMITS`: the defaults, overridden item by
/// item (`devices.ip=20/h,lectures.learner=off`), or `off` for none at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    limits: HashMap<(Action, Scope), Rate>,
    /// WebSocket messages of one connection.
    pub messages: Option<Rate>,
}

/// The defaults: generous for a learner, a classroom behind one address, or a retrying app;
/// tight for a script.
pub const DEFAULT_RULES: &str = "devices.ip=60/h, refresh.ip=600/h, refresh.learner=120/h, \
     lectures.ip=600/h, lectures.learner=60/h, text.ip=600/h, text.learner=60/h, \
     uploads.ip=120/h, admin.ip=20/h, sockets.ip=600/min, sockets.learner=60/min, \
     messages.connection=500/10s";

impl Default for Rules {
    fn default() -> Rules {
        DEFAULT_RULES.parse().expect("the default rules parse")
    }
}

impl Rules {
    /// No limits.
    pub fn none() -> Rules {
        Rules {
            limits: HashMap::new(),
            messages: None,
        }
    }

    pub fn get(&self, action: Action, scope: Scope) -> Option<Rate> {
        self.limits.get(&(action, scope)).copied()
    }

    /// The limits, as `TEACHBACK_RATE_LIMITS` would spell them (for logs and docs).
    pub fn describe(&self) -> String {
        let mut items: Vec<String> = Action::ALL
            .iter()
            .flat_map(|a| [(*a, Scope::Ip), (*a, Scope::Learner)])
            .filter_map(|(a, s)| {
                self.get(a, s)
                    .map(|r| format!("{}.{}={r}", a.as_str(), s.as_str()))
            })
            .collect();
        if let Some(rate) = self.messages {
            items.push(format!("messages.connection={rate}"));
        }
        if items.is_empty() {
            "off".to_owned()
        } else {
            items.join(",")
        }
    }

    fn apply(&mut self, spec: &str) -> Result<(), String> {
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}` is not `<action>.<scope>=<rate>`"))?;
            let value = value.trim();
            let rate = match value {
                "off" => None,
                _ => Some(value.parse::<Rate>()?),
            };
            let key = key.trim();
            if key == "messages.connection" {
                self.messages = rate;
                continue;
            }
            let (action, scope) = key
                .split_once('.')
                .ok_or_else(|| format!("`{key}` is not `<action>.<scope>` (like `devices.ip`)"))?;
            let action = Action::ALL
                .into_iter()
                .find(|a| a.as_str() == action)
                .ok_or_else(|| {
                    format!(
                        "`{action}` is not a limited action (devices, refresh, lectures, text, \
                         uploads, admin, sockets, messages)"
                    )
                })?;
            let scope = match scope {
                "ip" => Scope::Ip,
                "learner" => Scope::Learner,
                _ => return Err(format!("`{scope}` is not a scope (ip or learner)")),
            };
            if action == Action::Devices && scope == Scope::Learner {
                return Err(
                    "devices are registered before there is a learner: use devices.ip".to_owned(),
                );
            }
            if matches!(action, Action::Uploads | Action::Admin) && scope == Scope::Learner {
                return Err(format!(
                    "{} are counted per address, not per learner: use {}.ip",
                    action.what(),
                    action.as_str()
                ));
            }
            match rate {
                Some(rate) => self.limits.insert((action, scope), rate),
                None => self.limits.remove(&(action, scope)),
            };
        }
        Ok(())
    }
}

impl FromStr for Rules {
    type Err = String;

    fn from_str(s: &str) -> Result<Rules, String> {
        if s.trim() == "off" {
            return Ok(Rules::none());
        }
        let mut rules = Rules::none();
        if !s.trim().starts_with("only:") {
            rules.apply(DEFAULT_RULES)?;
            rules.apply(s)?;
        } else {
            rules.apply(s.trim().trim_start_matches("only:"))?;
        }
        Ok(rules)
    }
}

/// A refusal: which limit, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub action: Action,
    pub scope: Scope,
    pub rate: Rate,
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds to wait, rounded up (the `Retry-After` header).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_micros().div_ceil(1_000_000).max(1) as u64
    }

    pub fn message(&self) -> String {
        let whom = match self.scope {
            Scope::Ip => "from this address",
            Scope::Learner => "for this learner",
        };
        format!(
            "too many {} {whom} (at most {}); try again in {} s",
            self.action.what(),
            self.rate,
            self.retry_after_secs()
        )
    }
}

/// Where theoretical arrival times are kept.
#[derive(Clone)]
enum Cells {
    Memory(Arc<DashMap<String, i64>>),
    Postgres(sqlx::PgPool),
}

/// The rate limiter of a server. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    rules: Arc<Rules>,
    cells: Cells,
    checks: Arc<AtomicU64>,
}

/// Memory cells are swept of expired entries once every this many checks.
const SWEEP_EVERY: u64 = 4_096;

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

impl RateLimiter {
    /// Limits kept where `db` says: in PostgreSQL (shared by every instance) or in memory.
    pub fn new(rules: Rules, db: &Db) -> RateLimiter {
        let cells = match db {
            Db::Postgres(pool) => Cells::Postgres(pool.clone()),
            Db::Sqlite(_) => Cells::Memory(Arc::default()),
        };
        RateLimiter {
            rules: Arc::new(rules),
            cells,
            checks: Arc::default(),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Whether the limits are shared between instances.
    pub fn shared(&self) -> bool {
        matches!(self.cells, Cells::Postgres(_))
    }

    /// Counts one `action` by `learner` (when known) and `ip` against their limits. The learner
    /// is checked first, so that one learner past their limit does not use up the units of
    /// everyone behind the same address; a refusal by the address has used one of the learner's.
    pub async fn check(
        &self,
        action: Action,
        ip: IpAddr,
        learner: Option<Uuid>,
    ) -> Result<(), Limited> {
        if let Some(learner) = learner {
            self.check_learner(action, learner).await?;
        }
        if let Some(rate) = self.rules.get(action, Scope::Ip) {
            let key = format!("{}:ip:{}", action.as_str(), ip_key(ip));
            self.take(action, Scope::Ip, rate, &key).await?;
        }
        Ok(())
    }

    /// Whether `ip` is past its `action` limit now, without counting anything (for limits on
    /// failures: a client past it is refused before its attempt is even looked at).
    pub async fn exhausted(&self, action: Action, ip: IpAddr) -> Option<Limited> {
        let rate = self.rules.get(action, Scope::Ip)?;
        let key = format!("{}:ip:{}", action.as_str(), ip_key(ip));
        let (tat, now) = match &self.cells {
            Cells::Memory(cells) => (cells.get(&key).map(|t| *t), now_us()),
            Cells::Postgres(pool) => {
                let row: Result<(Option<i64>, i64), sqlx::Error> = sqlx::query_as(&format!(
                    "SELECT (SELECT tat FROM rate_limits WHERE key = $1), {DB_NOW_US}"
                ))
                .bind(&key)
                .fetch_one(pool)
                .await;
                match row {
                    Ok(row) => row,
                    Err(e) => {
                        tracing::warn!(error = %e, "rate limit check failed; allowing the request");
                        return None;
                    }
                }
            }
        };
        let (allowed, next) = gcra(tat?, now, rate);
        (!allowed).then(|| Limited {
            action,
            scope: Scope::Ip,
            rate,
            retry_after: Duration::from_micros((next - rate.per_us() - now).max(0) as u64),
        })
    }

    /// Counts one `action` by `learner` against their limit only.
    pub async fn check_learner(&self, action: Action, learner: Uuid) -> Result<(), Limited> {
        if let Some(rate) = self.rules.get(action, Scope::Learner) {
            let key = format!("{}:learner:{learner}", action.as_str());
            self.take(action, Scope::Learner, rate, &key).await?;
        }
        Ok(())
    }

    async fn take(
        &self,
        action: Action,
        scope: Scope,
        rate: Rate,
        key: &str,
    ) -> Result<(), Limited> {
        let now = now_us();
        let outcome = match &self.cells {
            Cells::Memory(cells) => {
                if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == 0 {
                    cells.retain(|_, tat| *tat > now);
                }
                let mut cell = cells.entry(key.to_owned()).or_insert(now);
                let (allowed, tat) = gcra(*cell, now, rate);
                if allowed {
                    *cell = tat;
                }
                Ok((allowed, tat, now))
            }
            Cells::Postgres(pool) => postgres_take(pool, key, rate).await,
        };
        let (allowed, tat, now) = match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                // A limiter that cannot reach its counters lets requests through: the database
                // being down fails them anyway, and a blip must not lock everyone out.
                tracing::warn!(error = %e, "rate limit check failed; allowing the request");
                metrics::counter!("teachback_rate_limit_errors_total").increment(1);
                return Ok(());
            }
        };
        if allowed {
            return Ok(());
        }
        metrics::counter!("teachback_rate_limited_total", "action" => action.as_str(),
            "scope" => scope.as_str())
        .increment(1);
        Err(Limited {
            action,
            scope,
            rate,
            retry_after: Duration::from_micros((tat - rate.per_us() - now).max(0) as u64),
        })
    }

    /// Deletes expired PostgreSQL cells (memory cells sweep themselves). Run now and then.
    pub async fn sweep(&self) -> Result<u64, sqlx::Error> {
        match &self.cells {
            Cells::Memory(cells) => {
                let now = now_us();
                let before = cells.len();
                cells.retain(|_, tat| *tat > now);
                Ok((before - cells.len()) as u64)
            }
            // By the database's clock, with a minute's margin for rows being moved right now.
            Cells::Postgres(pool) => Ok(sqlx::query(&format!(
                "DELETE FROM rate_limits WHERE tat < {DB_NOW_US} - 60000000"
            ))
            .execute(pool)
            .await?
            .rows_affected()),
        }
    }

    /// Sweeps expired cells every minute, for as long as the process runs.
    pub fn spawn_sweeper(&self) {
        let limiter = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                if let Err(e) = limiter.sweep().await {
                    tracing::warn!(error = %e, "sweeping rate limit counters failed");
                }
            }
        });
    }
}

/// One GCRA step: whether a request at `now` conforms, and the arrival time it would set (on a
/// refusal, the one it would have set: the wait is `tat - per - now`).
fn gcra(tat: i64, now: i64, rate: Rate) -> (bool, i64) {
    let next = tat.max(now) + rate.interval_us();
    (next - now <= rate.per_us(), next)
}

/// "Now" by the database's clock, in microseconds since the epoch: every instance sharing the
/// table uses the same clock.
const DB_NOW_US: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000)::BIGINT";

/// The GCRA step as one statement, by the database's clock: the row is inserted or moved only
/// when the request conforms (`excluded.tat` is now + interval). Returns whether it conformed,
/// the arrival time, and now.
async fn postgres_take(
    pool: &sqlx::PgPool,
    key: &str,
    rate: Rate,
) -> Result<(bool, i64, i64), sqlx::Error> {
    let interval = rate.interval_us();
    let per = rate.per_us();
    let moved: Option<(i64, i64)> = sqlx::query_as(&format!(
        "INSERT INTO rate_limits (key, tat) VALUES ($1, {DB_NOW_US} + $2) \
         ON CONFLICT (key) DO UPDATE \
         SET tat = GREATEST(rate_limits.tat, excluded.tat - $2) + $2 \
         WHERE GREATEST(rate_limits.tat, excluded.tat - $2) + $2 - (excluded.tat - $2) <= $3 \
         RETURNING tat, {DB_NOW_US}"
    ))
    .bind(key)
    .bind(interval)
    .bind(per)
    .fetch_optional(pool)
    .await?;
    if let Some((tat, now)) = moved {
        return Ok((true, tat, now));
    }
    let (tat, now): (Option<i64>, i64) = sqlx::query_as(&format!(
        "SELECT (SELECT tat FROM rate_limits WHERE key = $1), {DB_NOW_US}"
    ))
    .bind(key)
    .fetch_one(pool)
    .await?;
    Ok((false, tat.unwrap_or(now).max(now) + interval, now))
}

/// The part of an address that names one client: the whole IPv4 address, or the /64 network of
/// an IPv6 one (one host commonly holds a whole /64).
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The reverse proxies whose `X-Forwarded-For` is believed: addresses and CIDR networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl FromStr for TrustedProxies {
    type Err = String;

    /// `10.0.0.0/8, 192.0.2.7, fd00::/8`; empty for none.
    fn from_str(s: &str) -> Result<TrustedProxies, String> {
        let mut nets = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (item, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("`{item}` is not an IP address or CIDR network"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("`{item}` has a bad prefix length"))?,
                None => max,
            };
            nets.push((addr, bits));
        }
        Ok(TrustedProxies(nets))
    }
}

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0
            .iter()
            .any(|(net, bits)| match (canonical(*net), ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
                (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), *bits),
                _ => false,
            })
    }

    /// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
    /// right-most address in `X-Forwarded-For` that is not a trusted proxy (each proxy appends
    /// the address it saw, so entries left of the first untrusted one may be forged). Entries
    /// may carry a port (`192.0.2.1:5678`, `[2001:db8::1]:443`); unreadable ones stop the walk.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        for entry in forwarded_for.iter().rev() {
            let Some(ip) = parse_forwarded(entry) else {
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let full = usize::from(bits / 8);
    let rest = bits % 8;
    a[..full] == b[..full]
        && (rest == 0 || {
            let mask = 0xffu8 << (8 - rest);
            a[full] & mask == b[full] & mask
        })
}

/// One `X-Forwarded-For` entry: an address, maybe with a port.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
}

/// Paces one WebSocket connection's messages: over the rate, the connection is read more slowly
/// (the client's sends back up in TCP) instead of dropping a frame, which would lose audio.
pub struct MessageGate {
    rate: Option<Rate>,
    start: std::time::Instant,
    /// The theoretical arrival time, in microseconds since `start` (a monotonic clock: a wall
    /// clock stepped back must not stall a connection).
    tat: i64,
}

impl MessageGate {
    pub fn new(rate: Option<Rate>) -> MessageGate {
        MessageGate {
            rate,
            start: std::time::Instant::now(),
            tat: 0,
        }
    }

    /// Counts a message; returns when the next one may be read (`None`: at once).
    pub fn count(&mut self) -> Option<std::time::Instant> {
        let rate = self.rate?;
        let now = self.start.elapsed().as_micros() as i64;
        let next = self.tat.max(now) + rate.interval_us();
        self.tat = next;
        let wait = next - now - rate.per_us();
        (wait > 0).then(|| {
            metrics::counter!("teachback_rate_limited_total", "action" => "messages",
                "scope" => "connection")
            .increment(1);
            std::time::Instant::now() + Duration::from_micros(wait as u64)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let rate: Rate = "600/10min".parse().unwrap();
        assert_eq!(rate.count, 600);
        assert_eq!(rate.per, Duration::from_secs(600));
        assert_eq!(rate.to_string(), "600/10min");
        assert_eq!("20/h".parse::<Rate>().unwrap().to_string(), "20/h");
        assert_eq!("5/s".parse::<Rate>().unwrap().per, Duration::from_secs(1));
        for bad in ["20", "0/h", "x/h", "5/fortnight", "5/0s", "-1/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn rules_override_the_defaults_item_by_item() {
        let rules: Rules = "devices.ip=3/min, lectures.learner=off".parse().unwrap();
        assert_eq!(rules.get(Action::Devices, Scope::Ip).unwrap().count, 3);
        assert_eq!(rules.get(Action::Lectures, Scope::Learner), None);
        assert_eq!(
            rules.get(Action::Text, Scope::Learner),
            Rules::default().get(Action::Text, Scope::Learner)
        );
        let only: Rules = "only:devices.ip=3/min".parse().unwrap();
        assert_eq!(only.describe(), "devices.ip=3/min");
        assert_eq!("off".parse::<Rules>().unwrap(), Rules::none());
        assert_eq!(
            Rules::default().describe().parse::<Rules>().unwrap(),
            Rules::default()
        );
        for bad in [
            "devices.learner=1/s",
            "uploads.learner=1/s",
            "admin.learner=1/s",
            "nothing.ip=1/s",
            "devices.everyone=1/s",
            "devices",
        ] {
            assert!(bad.parse::<Rules>().is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn gcra_allows_a_burst_then_one_per_interval() {
        let rate = Rate {
            count: 3,
            per: Duration::from_secs(3),
        };
        let mut tat = 0;
        let t0 = 1_000_000_000;
        for _ in 0..3 {
            let (ok, next) = gcra(tat, t0, rate);
            assert!(ok);
            tat = next;
        }
        let (ok, next) = gcra(tat, t0, rate);
        assert!(!ok);
        // The fourth waits one interval (1 s) from the burst.
        assert_eq!(next - rate.per_us() - t0, 1_000_000);
        let (ok, _) = gcra(tat, t0 + 1_000_000, rate);
        assert!(ok);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies: TrustedProxies = "10.0.0.0/8, 2001:db8:ff::/48".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // A direct client: its own forged header is ignored.
        assert_eq!(
            proxies.client(ip("198.51.100.9"), &["1.2.3.4"]),
            ip("198.51.100.9")
        );
        // Through a trusted proxy: the address the proxy saw, not what the client wrote.
        assert_eq!(
            proxies.client(ip("10.1.2.3"), &["1.2.3.4", "198.51.100.9"]),
            ip("198.51.100.9")
        );
        // Two trusted hops, ports and brackets.
        assert_eq!(
            proxies.client(ip("10.0.0.1"), &["[2001:db8::7]:443", "10.9.9.9:80"]),
            ip("2001:db8::7")
        );
        assert_eq!(
            proxies.client(ip("::ffff:10.0.0.1"), &["203.0.113.5:5678"]),
            ip("203.0.113.5")
        );
        // An unreadable entry stops the walk at the last proxy.
        assert_eq!(proxies.client(ip("10.0.0.1"), &["unknown"]), ip("10.0.0.1"));
        assert!(proxies.contains(ip("2001:db8:ff:1::1")));
        assert!(!proxies.contains(ip("2001:db8:fe::1")));
        assert!(TrustedProxies::default().is_empty());
        for bad in ["10.0.0.0/33", "nope", "::/129"] {
            assert!(bad.parse::<TrustedProxies>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::7".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "192.0.2.1");
    }

    #[tokio::test]
    async fn memory_cells_refuse_past_the_limit_and_say_when() {
        let db = Db::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .connect_lazy("sqlite::memory:")
                .unwrap(),
        );
        let limiter = RateLimiter::new("only:devices.ip=2/h".parse().unwrap(), &db);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let other: IpAddr = "192.0.2.10".parse().unwrap();
        limiter.check(Action::Devices, ip, None).await.unwrap();
        limiter.check(Action::Devices, ip, None).await.unwrap();
        let refused = limiter.check(Action::Devices, ip, None).await.unwrap_err();
        assert_eq!(refused.scope, Scope::Ip);
        // One comes back every 30 minutes.
        assert!((1_790..=1_800).contains(&refused.retry_after_secs()));
        limiter.check(Action::Devices, other, None).await.unwrap();
        // Actions without a rule are not limited.
        for _ in 0..100 {
            limiter.check(Action::Refresh, ip, None).await.unwrap();
        }
    }

    #[test]
    fn the_message_gate_paces_past_the_burst() {
        let mut gate = MessageGate::new(Some(Rate {
            count: 10,
            per: Duration::from_secs(1),
        }));
        let start = std::time::Instant::now();
        let waits: Vec<Duration> = (0..12)
            .map(|_| gate.count().map_or(Duration::ZERO, |at| at - start))
            .collect();
        assert!(waits[..10].iter().all(|w| w.is_zero()));
        assert!(waits[10] > Duration::from_millis(50) && waits[10] <= Duration::from_millis(150));
        assert!(waits[11] > waits[10]);
        assert!(MessageGate::new(None).count().is_none());
    }
}
