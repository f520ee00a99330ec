//! Admin endpoints: add and edit catalogue topics.
//!
//! They exist only when `TEACHBACK_ADMIN_TOKEN` is set (otherwise they answer `404 not_found`
//! like any unknown path) and need `Authorization: Bearer <admin token>`.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use teachback_events::{CatalogEntry, Localized, LocalizedList, TopicPublished};

use super::error::{ApiError, Result};
use super::extract::{ApiJson, ClientIp, RequestMeta};
use super::{AppState, POSITION_HEADER};
use crate::catalog::{self, IfExists, PublishError};
use crate::limits::Action;

/// Longest topic, major or subject id.
pub const MAX_ID_CHARS: usize = 100;
/// Longest title or description (per language, after trimming).
pub const MAX_TEXT_CHARS: usize = 2_000;
/// Longest major or subject name (per language, after trimming).
pub const MAX_NAME_CHARS: usize = 200;
/// Most key concepts per language.
pub const MAX_KEY_CONCEPTS: usize = 30;
/// Longest key concept (after trimming).
pub const MAX_KEY_CONCEPT_CHARS: usize = 200;

/// A request that presented the admin token.
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(expected) = state.admin_token_hash else {
            // Not configured: the admin endpoints do not exist.
            return Err(ApiError::not_found("not_found", "no such endpoint"));
        };
        // Wrong tokens are limited per address: a client past the limit is refused before its
        // token is even compared, so guessing cannot go faster than the limit.
        let ClientIp(ip) = match ClientIp::from_request_parts(parts, state).await {
            Ok(ip) => ip,
            Err(never) => match never {},
        };
        if let Some(limited) = state.limits.exhausted(Action::Admin, ip).await {
            return Err(limited.into());
        }
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        match token {
            Some(token) if digests_equal(&Sha256::digest(token.as_bytes()).into(), &expected) => {
                Ok(AdminAuth)
            }
            _ => {
                // Counts the failure (a refusal here only means this one was the last allowed).
                let _ = state.limits.check(Action::Admin, ip, None).await;
                Err(ApiError::unauthorized(
                    "invalid_admin_token",
                    "this endpoint needs `Authorization: Bearer <admin token>` with the admin token",
                ))
            }
        }
    }
}

/// Compares two digests in constant time: every byte is looked at, whatever differs.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// A major or a subject, as an admin sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryBody {
    pub id: String,
    pub name: Localized,
}

/// A whole topic, as an admin sends it (the shape `GET /api/v1/topics/{id}` answers with).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicBody {
    pub topic_id: String,
    pub major: EntryBody,
    pub subject: EntryBody,
    pub title: Localized,
    pub description: Localized,
    pub key_concepts: LocalizedList,
}

/// `POST /api/v1/admin/topics`: adds a topic. `409 topic_exists` if the id is taken.
pub async fn create_topic(
    AdminAuth: AdminAuth,
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<TopicBody>,
) -> Result<Response> {
    let topic = validate(body).map_err(invalid)?;
    let published = catalog::publish_one(&state.store, topic.clone(), meta, IfExists::Refuse)
        .await
        .map_err(publish_error)?;
    respond(&state, StatusCode::CREATED, topic, published.position).await
}

/// `PUT /api/v1/admin/topics/{topicId}`: creates or replaces a topic. Sending the content the
/// catalogue already holds changes nothing.
pub async fn put_topic(
    AdminAuth: AdminAuth,
    State(state): State<AppState>,
    Path(topic_id): Path<String>,
    RequestMeta(meta): RequestMeta,
    ApiJson(body): ApiJson<TopicBody>,
) -> Result<Response> {
    if body.topic_id != topic_id {
        return Err(ApiError::bad_request(
            "topic_id_mismatch",
            format!(
                "the body's topicId `{}` is not the topic in the path, `{topic_id}`",
                body.topic_id
            ),
        ));
    }
    let topic = validate(body).map_err(invalid)?;
    let published = catalog::publish_one(&state.store, topic.clone(), meta, IfExists::Replace)
        .await
        .map_err(publish_error)?;
    respond(&state, StatusCode::OK, topic, published.position).await
}

/// Waits (bounded) until the catalogue read model shows the topic, then answers with it. A slow
/// read model does not turn a committed write into an error.
async fn respond(
    state: &AppState,
    status: StatusCode,
    topic: TopicPublished,
    position: u64,
) -> Result<Response> {
    state
        .topics
        .wait_for(position, state.read_your_writes_timeout)
        .await;
    let mut response = (status, Json(topic)).into_response();
    response
        .headers_mut()
        .insert(POSITION_HEADER, HeaderValue::from(position));
    Ok(response)
}

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_topic", message)
}

fn publish_error(e: PublishError) -> ApiError {
    match e {
        PublishError::Exists(id) => ApiError::conflict(
            "topic_exists",
            format!(
                "topic `{id}` is already in the catalogue; PUT /api/v1/admin/topics/{id} edits it"
            ),
        ),
        PublishError::Append(e) => e.into(),
        PublishError::Store(e) => e.into(),
        other @ PublishError::Unreadable { .. } => {
            ApiError::Internal(anyhow::Error::new(other).context("reading the catalogue"))
        }
    }
}

/// Checks a topic against the catalogue's rules and trims its texts. The message says what is
/// wrong and where.
pub fn validate(body: TopicBody) -> std::result::Result<TopicPublished, String> {
    let major = entry("major", body.major)?;
    let subject = entry("subject", body.subject)?;
    slug("topicId", &body.topic_id)?;
    let prefix = format!("{}.", subject.id);
    if !body.topic_id.starts_with(&prefix) || body.topic_id.len() == prefix.len() {
        return Err(format!(
            "topicId `{}` must start with its subject's id and a dot (`{prefix}…`)",
            body.topic_id
        ));
    }
    Ok(TopicPublished {
        topic_id: body.topic_id,
        major,
        subject,
        title: texts("title", body.title, MAX_TEXT_CHARS)?,
        description: texts("description", body.description, MAX_TEXT_CHARS)?,
        key_concepts: key_concepts(body.key_concepts)?,
    })
}

fn entry(field: &str, body: EntryBody) -> std::result::Result<CatalogEntry, String> {
    slug(&format!("{field}.id"), &body.id)?;
    Ok(CatalogEntry {
        id: body.id,
        name: texts(&format!("{field}.name"), body.name, MAX_NAME_CHARS)?,
    })
}

/// A lowercase slug: `a-z`, `0-9`, `.` and `-`, at most [`MAX_ID_CHARS`], starting and ending
/// with a letter or digit, with no empty dot-separated part.
fn slug(field: &str, id: &str) -> std::result::Result<(), String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id.chars().all(|c| alnum(c) || c == '.' || c == '-')
        && id.starts_with(alnum)
        && id.ends_with(alnum)
        && !id.contains("..");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} `{id}` is not a slug: use 1 to {MAX_ID_CHARS} of `a-z`, `0-9`, `.` and `-`, \
             starting and ending with a letter or digit, with no `..`"
        ))
    }
}

/// A language key: an ISO 639-1 code, two lowercase ASCII letters.
fn language(field: &str, code: &str) -> std::result::Result<(), String> {
    if code.len() == 2 && code.chars().all(|c| c.is_ascii_lowercase()) {
        Ok(())
    } else {
        Err(format!(
            "{field} has the language key `{code}`; use a 2-letter lowercase code such as `en` or `ko`"
        ))
    }
}

/// Texts keyed by language: at least one, each non-empty and at most `max` characters once
/// trimmed.
fn texts(field: &str, texts: Localized, max: usize) -> std::result::Result<Localized, String> {
    if texts.is_empty() {
        return Err(format!(
            "{field} needs a text in at least one language, e.g. {{\"en\": \"…\"}}"
        ));
    }
    texts
        .into_iter()
        .map(|(lang, text)| {
            language(field, &lang)?;
            let text = text.trim();
            if text.is_empty() {
                return Err(format!(
                    "{field}.{lang} is empty; leave the language out instead"
                ));
            }
            let chars = text.chars().count();
            if chars > max {
                return Err(format!(
                    "{field}.{lang} has {chars} characters; at most {max} are allowed"
                ));
            }
            Ok((lang, text.to_owned()))
        })
        .collect()
}

fn key_concepts(lists: LocalizedList) -> std::result::Result<LocalizedList, String> {
    lists
        .into_iter()
        .map(|(lang, concepts)| {
            language("keyConcepts", &lang)?;
            if concepts.len() > MAX_KEY_CONCEPTS {
                return Err(format!(
                    "keyConcepts.{lang} has {} concepts; at most {MAX_KEY_CONCEPTS} are allowed",
                    concepts.len()
                ));
            }
            let concepts = concepts
                .iter()
                .enumerate()
                .map(|(i, concept)| {
                    let concept = concept.trim();
                    let chars = concept.chars().count();
                    if concept.is_empty() {
                        Err(format!("keyConcepts.{lang}[{i}] is empty"))
                    } else if chars > MAX_KEY_CONCEPT_CHARS {
                        Err(format!(
                            "keyConcepts.{lang}[{i}] has {chars} characters; at most \
                             {MAX_KEY_CONCEPT_CHARS} are allowed"
                        ))
                    } else {
                        Ok(concept.to_owned())
                    }
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok((lang, concepts))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_equal_only_when_every_byte_is() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(digests_equal(&a, &b));
        b[31] ^= 1;
        assert!(!digests_equal(&a, &b));
        b = a;
        b[0] = 0;
        assert!(!digests_equal(&a, &b));
    }

    #[test]
    fn slugs() {
        for ok in ["cs", "cs.os", "cs.os.dead-lock2", "a"] {
            assert!(slug("id", ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "CS", "cs..os", ".cs", "cs.", "-cs", "cs os", "cs_os", "cs/os", "ç",
        ] {
            assert!(slug("id", bad).is_err(), "{bad}");
        }
        assert!(slug("id", &"a".repeat(MAX_ID_CHARS)).is_ok());
        assert!(slug("id", &"a".repeat(MAX_ID_CHARS + 1)).is_err());
    }

    #[test]
    fn texts_are_trimmed_and_limits_count_characters_not_bytes() {
        let t = texts("title", [("ko".into(), "  가  ".into())].into(), 1).unwrap();
        assert_eq!(t["ko"], "가");
        let long: Localized = [("ko".into(), "가".repeat(MAX_TEXT_CHARS))].into();
        assert!(texts("title", long, MAX_TEXT_CHARS).is_ok());
        let longer: Localized = [("ko".into(), "가".repeat(MAX_TEXT_CHARS + 1))].into();
        assert!(texts("title", longer, MAX_TEXT_CHARS).is_err());
    }
}
