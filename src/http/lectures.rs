//! Lectures over HTTP: the REST fallback (create, signed upload, finish, cancel), reading a
//! lecture, its audio segments, share links, and following it live over a WebSocket (`watch`)
//! or Server-Sent Events (`events`).
//!
//! Reads fold the lecture's own stream from the log, so they are never behind a projection.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use teachback_events::{
    AudioSegmentStored, Event, FinishReason, LectureCancelled, LectureFinished, LectureMode,
    LectureStarted, NewEvent, streams,
};
use teachback_projections::lectures::{Lecture, LectureStatus, Processing};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::error::{ApiError, Result};
use super::extract::{ApiJson, AuthUser, ClientIp, RequestMeta, prefers_korean};
use super::live::{close, user_from};
use super::{AppState, POSITION_HEADER};
use crate::auth::{Purpose, TokenError};
use crate::live::LiveError;
use crate::live::lecture::Action;
use crate::live::protocol::{self, ServerMessage};
use crate::projection::topics;
use crate::store::{AppendError, Direction, ExpectedVersion};

/// Longest a feed follows a lecture that is not live on this server (an upload waiting for its
/// recording); the client reconnects to follow longer.
const MAX_TAIL: Duration = Duration::from_secs(3600);
const DEFAULT_SHARE_TTL: Duration = Duration::from_secs(3600);
const MAX_SHARE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn not_found() -> ApiError {
    ApiError::not_found("lecture_not_found", "no such lecture")
}

impl From<LiveError> for ApiError {
    fn from(e: LiveError) -> Self {
        let status = match e.code {
            "internal" => return ApiError::Internal(anyhow::anyhow!(e.message)),
            "storage_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::CONFLICT,
        };
        ApiError::new(status, e.code, e.message)
    }
}

/// Reads and folds a lecture's stream. `None` if there is no such lecture.
pub async fn load(state: &AppState, lecture: Uuid) -> Result<Option<Lecture>> {
    let events = state
        .store
        .read_stream_all(&streams::lecture(lecture))
        .await?;
    Lecture::fold(&events).map_err(|e| ApiError::Internal(anyhow::Error::new(e)))
}

/// A lecture the learner owns; anyone else's is "not found", exactly like a missing one.
async fn load_owned(state: &AppState, user: Uuid, lecture: Uuid) -> Result<Lecture> {
    load(state, lecture)
        .await?
        .filter(|l| l.owner() == user)
        .ok_or_else(not_found)
}

#[derive(Debug, Deserialize)]
pub struct ViewQuery {
    /// The owner's access token (browsers cannot set headers on WebSockets or EventSource).
    pub token: Option<String>,
    /// A share token the owner created.
    pub share: Option<String>,
}

/// A lecture its owner, or a holder of its share token, may see.
async fn load_viewable(
    state: &AppState,
    headers: &HeaderMap,
    query: &ViewQuery,
    lecture: Uuid,
) -> Result<Lecture> {
    if let Some(share) = &query.share {
        let grant = state
            .keys
            .verify_grant(Purpose::Share, share)
            .map_err(|e| match e {
                TokenError::Expired => {
                    ApiError::unauthorized("share_token_expired", "the share link has expired")
                }
                TokenError::Invalid => {
                    ApiError::unauthorized("invalid_share_token", "the share token is not valid")
                }
            })?;
        if grant.sub != lecture {
            return Err(not_found());
        }
        return load(state, lecture).await?.ok_or_else(not_found);
    }
    let user = user_from(state, headers, query.token.as_deref())?;
    load_owned(state, user, lecture).await
}

/// The JSON view of a lecture.
pub fn view(state: &AppState, lecture: &Lecture) -> Value {
    let id = lecture.id();
    let segments: Vec<Value> = lecture
        .segments
        .iter()
        .map(|s| {
            json!({
                "index": s.index,
                "durationMs": s.duration_ms,
                "bytes": s.bytes,
                "sha256": s.sha256,
                "firstSeq": s.first_seq,
                "lastSeq": s.last_seq,
                "url": format!("{}/api/v1/lectures/{id}/segments/{}", state.public_url, s.index),
            })
        })
        .collect();
    let duration_ms = match lecture.format() {
        f if f.is_pcm() => Some(lecture.stored_ms),
        _ => None,
    };
    let transcript = match (&lecture.transcript, lecture.transcripts.is_empty()) {
        (Some(t), _) => Some(t.text.clone()),
        (None, false) => Some(lecture.transcript_so_far()),
        (None, true) => None,
    };
    let grade = lecture.latest_grade();
    json!({
        "lectureId": id,
        "userId": lecture.owner(),
        "topicId": lecture.started.topic_id,
        "format": lecture.format(),
        "sampleRate": lecture.started.sample_rate,
        "language": lecture.started.language,
        "mode": lecture.mode(),
        "status": lecture.status.as_str(),
        "live": state.live.get(id).is_some(),
        "startedAt": lecture.started_at,
        "endedAt": lecture.ended_at,
        "durationMs": duration_ms,
        "segments": segments,
        "processing": processing(state, lecture),
        "transcript": transcript,
        "transcriptComplete": lecture.transcript.is_some(),
        "attempt": lecture.attempt,
        "score": grade.map(|g| g.score),
        "feedback": grade.map(|g| g.feedback.clone()),
        "grade": grade.map(grade_view),
        "grades": lecture.grades.iter().map(|g| json!({
            "attempt": g.attempt,
            "grader": g.grader,
            "fallbackReason": g.fallback_reason,
            "score": g.score,
        })).collect::<Vec<_>>(),
        "failure": lecture.failure.as_ref().map(|f| json!({
            "stage": f.stage,
            "code": f.code,
            "message": f.message,
            "retryable": f.retryable,
        })),
        "rating": lecture.rating,
        "version": lecture.version,
    })
}

/// Where the lecture is in its processing; an audio lecture with no speech-to-text configured
/// is "awaiting_transcription" rather than "transcribing".
fn processing(state: &AppState, lecture: &Lecture) -> &'static str {
    match lecture.processing() {
        Processing::Transcribing
            if !state.pipeline.has_stt() && lecture.untranscribed().next().is_some() =>
        {
            "awaiting_transcription"
        }
        p => p.as_str(),
    }
}

fn grade_view(g: &teachback_events::LectureGraded) -> Value {
    json!({
        "attempt": g.attempt,
        "grader": g.grader,
        "fallbackReason": g.fallback_reason,
        "provider": g.provider,
        "model": g.model,
        "score": g.score,
        "subScores": g.sub_scores,
        "feedback": g.feedback,
        "strengths": g.strengths,
        "improvements": g.improvements,
        "misconceptions": g.misconceptions,
        "usage": g.usage,
        "outputMode": g.output_mode,
        "latency": g.latency,
    })
}

pub async fn get_lecture(
    State(state): State<AppState>,
    Path(lecture): Path<Uuid>,
    Query(query): Query<ViewQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>> {
    let lecture = load_viewable(&state, &headers, &query, lecture).await?;
    Ok(Json(view(&state, &lecture)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateLecture {
    topic_id: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    language: Option<String>,
    /// A text lecture: the explanation, typed.
    #[serde(default)]
    text: Option<String>,
}

/// Longest text lecture, in characters.
pub const MAX_TEXT_CHARS: usize = 20_000;

/// Checks a lecture's language (default `ko`) and topic. Errors are `(code, message)`.
pub(super) async fn check_lecture(
    state: &AppState,
    topic_id: &str,
    language: Option<String>,
) -> Result<String, (&'static str, String)> {
    let language = language.unwrap_or_else(|| "ko".to_owned());
    if !protocol::valid_language(&language) {
        return Err((
            "invalid_language",
            "language must be a two-letter ISO 639-1 code such as `ko` or `en`".into(),
        ));
    }
    match topics::find_topic(&state.db, topic_id).await {
        Ok(Some(_)) => Ok(language),
        Ok(None) => Err((
            "unknown_topic",
            format!(
                "there is no topic `{}` in the catalogue",
                topic_id.chars().take(100).collect::<String>()
            ),
        )),
        Err(e) => {
            tracing::error!(error = %e, "looking up a topic failed");
            Err((
                "internal",
                "an internal error occurred; it has been logged".into(),
            ))
        }
    }
}

/// Whether `user`'s daily quotas let them start a lecture (`audio`: one that records audio);
/// a refusal is `429 quota_exceeded` in the learner's language, until midnight.
pub async fn check_quota(
    state: &AppState,
    user: Uuid,
    audio: bool,
    korean: bool,
) -> Result<crate::usage::Allowance> {
    match state
        .quotas
        .check_start(user, audio)
        .await
        .map_err(anyhow::Error::from)?
    {
        Ok(allowance) => Ok(allowance),
        Err(exceeded) => Err(ApiError::TooMany {
            code: "quota_exceeded",
            message: exceeded.message(korean),
            retry_after_secs: exceeded.retry_after_secs(),
        }),
    }
}

/// Starts a text lecture: started, its text, finished, in one append; the pipeline grades it.
/// Errors are `(code, message)`; `internal` is the server's fault.
#[allow(clippy::too_many_arguments)]
pub async fn start_text(
    state: &AppState,
    user: Uuid,
    lecture_id: Uuid,
    topic_id: String,
    language: Option<String>,
    text: &str,
    mut meta: teachback_events::Metadata,
) -> std::result::Result<(Uuid, crate::store::Appended), (&'static str, String)> {
    let text = text.trim();
    if text.is_empty() {
        return Err(("invalid_text", "the text is empty".into()));
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err((
            "invalid_text",
            format!("a text lecture has at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    let language = check_lecture(state, &topic_id, language).await?;
    meta.acting_user = Some(user);
    let events = [
        Event::LectureStarted(LectureStarted {
            lecture_id,
            user_id: user,
            topic_id,
            format: teachback_events::AudioFormat::Text,
            sample_rate: None,
            language,
            mode: LectureMode::Text,
        }),
        Event::LectureTextSubmitted(teachback_events::LectureTextSubmitted {
            lecture_id,
            text: text.to_owned(),
        }),
        Event::LectureFinished(LectureFinished {
            lecture_id,
            duration_ms: None,
            segments: 0,
            reason: FinishReason::Learner,
        }),
    ];
    let appended = state
        .store
        .append_to_stream(
            &streams::lecture(lecture_id),
            ExpectedVersion::NoStream,
            events
                .iter()
                .map(|e| NewEvent::from_event(e, meta.clone()))
                .collect(),
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not start a text lecture");
            (
                "internal",
                "an internal error occurred; it has been logged".to_owned(),
            )
        })?;
    state.pipeline.notify(lecture_id);
    Ok((lecture_id, appended))
}

/// `POST /api/v1/lectures`: a lecture whose recording is uploaded whole through a signed URL,
/// or, with `text`, a text lecture graded from the text.
pub async fn create(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    RequestMeta(mut meta): RequestMeta,
    ApiJson(body): ApiJson<CreateLecture>,
) -> Result<Response> {
    let action = match body.text {
        Some(_) => crate::limits::Action::Text,
        None => crate::limits::Action::Lectures,
    };
    state.limits.check(action, ip, Some(user)).await?;
    state.refuse_erased(user).await?;
    check_quota(&state, user, body.text.is_none(), prefers_korean(&headers)).await?;
    let unprocessable = |(code, message): (&'static str, String)| match code {
        "internal" => ApiError::Internal(anyhow::anyhow!(message)),
        _ => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message),
    };
    if let Some(text) = &body.text {
        if body.format.as_deref().is_some_and(|f| f != "text") {
            return Err(unprocessable((
                "invalid_request",
                "a lecture has either `text` or an audio `format`, not both".into(),
            )));
        }
        let (lecture_id, appended) = start_text(
            &state,
            user,
            Uuid::now_v7(),
            body.topic_id,
            body.language,
            text,
            meta,
        )
        .await
        .map_err(unprocessable)?;
        let lecture = load(&state, lecture_id).await?.ok_or_else(not_found)?;
        return Ok(with_position(
            StatusCode::CREATED,
            view(&state, &lecture),
            appended.position,
        ));
    }
    let Some(format) = body.format.as_deref() else {
        return Err(unprocessable((
            "invalid_request",
            "give the recording's `format` (webm, ogg, wav, mp4, mp3), or `text` for a text lecture".into(),
        )));
    };
    let (format, _) = protocol::check_format(format, None, None).map_err(unprocessable)?;
    if format.is_pcm() {
        return Err(unprocessable((
            "unsupported_format",
            "raw pcm_s16le is streamed over /api/v1/live; upload a container format (webm, ogg, wav, mp4, mp3)".into(),
        )));
    }
    let language = check_lecture(&state, &body.topic_id, body.language)
        .await
        .map_err(unprocessable)?;
    let lecture_id = Uuid::now_v7();
    meta.acting_user = Some(user);
    let event = Event::LectureStarted(LectureStarted {
        lecture_id,
        user_id: user,
        topic_id: body.topic_id,
        format,
        sample_rate: None,
        language,
        mode: LectureMode::Upload,
    });
    let appended = state
        .store
        .append_to_stream(
            &streams::lecture(lecture_id),
            ExpectedVersion::NoStream,
            vec![NewEvent::from_event(&event, meta)],
        )
        .await?;
    let mut grant = state.keys.grant(lecture_id, state.upload_url_ttl);
    grant.ct = Some(format.content_type().to_owned());
    grant.max = Some(state.max_recording_bytes);
    let sig = state.keys.sign_grant(Purpose::Upload, &grant)?;
    let expires_at = jiff::Timestamp::from_second(grant.exp).map_err(anyhow::Error::new)?;
    // With S3-compatible storage the recording goes straight to the bucket, by a pre-signed
    // URL; the server takes it in when the lecture is finished.
    let direct = state
        .blobs
        .signed_put_url(
            &crate::blob::direct_upload_key(lecture_id),
            state.upload_url_ttl,
        )
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("signing an upload URL")))?;
    let upload_url = direct
        .clone()
        .unwrap_or_else(|| format!("{}/api/v1/uploads/{lecture_id}?sig={sig}", state.public_url));
    let body = json!({
        "lectureId": lecture_id,
        "uploadUrl": upload_url,
        "method": "PUT",
        "contentType": format.content_type(),
        "maxBytes": state.max_recording_bytes,
        "expiresAt": expires_at,
        "direct": direct.is_some(),
    });
    Ok(with_position(StatusCode::CREATED, body, appended.position))
}

pub(super) fn with_position(status: StatusCode, body: Value, position: u64) -> Response {
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(POSITION_HEADER, HeaderValue::from(position));
    response
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    sig: Option<String>,
}

/// The media type without parameters, lowercased: `audio/webm;codecs=opus` → `audio/webm`.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `PUT /api/v1/uploads/{id}?sig=…`: the recording of an upload lecture. The signature is the
/// authorisation; it fixes the content type and the largest length.
pub async fn upload(
    State(state): State<AppState>,
    Path(lecture_id): Path<Uuid>,
    Query(query): Query<UploadQuery>,
    ClientIp(ip): ClientIp,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    // A valid upload URL is never rate limited (its lecture's start was): an accepted lecture
    // must be able to deliver its recording. Refused attempts (forged, expired or mismatched
    // URLs) count against the address, so guessing is slow.
    let checked = match check_upload(&state, lecture_id, query, &headers) {
        Ok(max) => Ok(max),
        Err(refused) => match state
            .limits
            .check(crate::limits::Action::Uploads, ip, None)
            .await
        {
            Ok(()) => Err(refused),
            Err(limited) => Err(limited.into()),
        },
    };
    match checked {
        Ok(max) => store_upload(state, lecture_id, RequestMeta(meta), max, body).await,
        Err(e) => {
            // Read (a bounded part of) what the client is sending before refusing, so that it
            // gets the answer instead of a connection reset.
            let _ = axum::body::to_bytes(body, DRAIN_BYTES).await;
            Err(e)
        }
    }
}

/// How much of a refused upload is read before answering.
const DRAIN_BYTES: usize = 1024 * 1024;

/// Checks an upload's signature, content type and declared length; returns the largest length.
fn check_upload(
    state: &AppState,
    lecture_id: Uuid,
    query: UploadQuery,
    headers: &HeaderMap,
) -> Result<u64> {
    let forbidden =
        |code, message: &str| ApiError::new(StatusCode::FORBIDDEN, code, message.to_owned());
    let sig = query.sig.ok_or_else(|| {
        ApiError::unauthorized(
            "missing_signature",
            "use the uploadUrl from POST /api/v1/lectures as it is",
        )
    })?;
    let grant = state
        .keys
        .verify_grant(Purpose::Upload, &sig)
        .map_err(|e| match e {
            TokenError::Expired => forbidden(
                "upload_url_expired",
                "the upload URL has expired; create a new lecture",
            ),
            TokenError::Invalid => forbidden(
                "invalid_signature",
                "the upload URL's signature is not valid",
            ),
        })?;
    if grant.sub != lecture_id {
        return Err(forbidden(
            "invalid_signature",
            "the upload URL's signature is not valid",
        ));
    }
    let allowed = grant.ct.unwrap_or_default();
    let sent = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(essence)
        .unwrap_or_default();
    if sent != allowed {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type_mismatch",
            format!("this upload URL accepts `Content-Type: {allowed}` only"),
        ));
    }
    let max = grant.max.unwrap_or(0);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("this upload URL accepts at most {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    Ok(max)
}

async fn store_upload(
    state: AppState,
    lecture_id: Uuid,
    meta: RequestMeta,
    max: u64,
    body: Body,
) -> Result<Response> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("this upload URL accepts at most {max} bytes"),
        )
    };
    let bytes = axum::body::to_bytes(body, usize::try_from(max).unwrap_or(usize::MAX))
        .await
        .map_err(|_| too_large())?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request(
            "empty_upload",
            "the recording is empty",
        ));
    }
    let (_, answer, position) = ingest(&state, lecture_id, bytes, meta).await?;
    Ok(match position {
        Some(position) => with_position(StatusCode::OK, answer, position),
        None => (StatusCode::OK, Json(answer)).into_response(),
    })
}

/// Takes a recording uploaded straight to the blob store in, when an upload lecture without
/// audio is finished: checked like a recording sent to the server, stored (sealed) as its
/// segment, and the raw upload deleted. `None` if nothing was uploaded there.
pub(crate) async fn ingest_direct_upload(
    state: &AppState,
    lecture: &Lecture,
    meta: teachback_events::Metadata,
) -> Result<Option<u64>> {
    let key = crate::blob::direct_upload_key(lecture.id());
    let bytes = match state.blobs.get(&key).await {
        Ok(bytes) => bytes,
        Err(crate::blob::BlobError::NotFound(_) | crate::blob::BlobError::InvalidKey(_)) => {
            return Ok(None);
        }
        Err(e) => {
            return Err(ApiError::Internal(
                anyhow::Error::new(e).context("reading a direct upload"),
            ));
        }
    };
    if bytes.len() as u64 > state.max_recording_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the uploaded recording has {} bytes; at most {} are accepted",
                bytes.len(),
                state.max_recording_bytes
            ),
        ));
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let (_, _, position) = ingest(state, lecture.id(), bytes, RequestMeta(meta)).await?;
    if let Err(e) = state.blobs.delete(&key).await {
        tracing::warn!(lecture = %lecture.id(), error = %e, "deleting a direct upload after taking it in failed");
    }
    Ok(position)
}

/// Checks a whole recording against its lecture, stores it as the lecture's only segment and
/// records it. Returns the lecture as it was read, the answer, and the log position (`None`:
/// the same recording was stored before).
async fn ingest(
    state: &AppState,
    lecture_id: Uuid,
    bytes: Bytes,
    RequestMeta(mut meta): RequestMeta,
) -> Result<(Lecture, Value, Option<u64>)> {
    let lecture = load(state, lecture_id).await?.ok_or_else(not_found)?;
    if lecture.mode() != LectureMode::Upload {
        return Err(ApiError::conflict(
            "not_an_upload",
            "this lecture streams its audio live",
        ));
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let answer = |lecture: &Lecture| json!({ "lectureId": lecture.id(), "bytes": bytes.len(), "sha256": sha256 });
    if let Some(existing) = lecture.segments.first() {
        if existing.sha256 == sha256 {
            let answer = answer(&lecture);
            return Ok((lecture, answer, None));
        }
        return Err(ApiError::conflict(
            "already_uploaded",
            "this lecture's recording was already uploaded",
        ));
    }
    if lecture.status.is_terminal() {
        return Err(ApiError::conflict(
            "lecture_ended",
            format!("the lecture is {}", lecture.status.as_str()),
        ));
    }
    // Bytes that are recognisably another container than the lecture declared are refused
    // (unrecognised bytes go on: the speech-to-text provider is the judge of those).
    if let Some(found) = crate::live::sniff::sniff(&bytes)
        && found != lecture.format()
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "recording_format_mismatch",
            format!(
                "this lecture's recording is {}, but the bytes sent are {}",
                lecture.format().content_type(),
                found.content_type()
            ),
        ));
    }
    // The content's hash is part of the key, so two racing uploads never overwrite each other.
    let key = format!(
        "lectures/{lecture_id}/segment-000000-{}.{}",
        &sha256[..16],
        lecture.format().extension()
    );
    state
        .blobs
        .put(&key, bytes.clone())
        .await
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("storing an upload")))?;
    meta.acting_user = Some(lecture.owner());
    let event = Event::AudioSegmentStored(AudioSegmentStored {
        lecture_id,
        index: 0,
        blob_key: key,
        bytes: bytes.len() as u64,
        duration_ms: wav_duration_ms(&bytes),
        sha256: sha256.clone(),
        first_seq: 0,
        last_seq: 0,
    });
    let position = append_after(state, &lecture, &event, meta, || {
        ApiError::conflict(
            "already_uploaded",
            "the lecture changed while uploading; read it and try again if needed",
        )
    })
    .await?;
    let answer = answer(&lecture);
    Ok((lecture, answer, Some(position)))
}

/// The length of a WAV recording, from its header's byte rate and its data chunk; `None` for
/// anything else (other containers' lengths are not read).
fn wav_duration_ms(bytes: &[u8]) -> Option<u64> {
    let pcm = crate::live::segment::wav_pcm(bytes)?;
    if bytes.get(12..16)? != b"fmt " {
        return None;
    }
    let byte_rate = u32::from_le_bytes(bytes.get(28..32)?.try_into().ok()?);
    (byte_rate > 0).then(|| pcm.len() as u64 * 1_000 / u64::from(byte_rate))
}

/// Appends `event` to a lecture's stream, expecting it unchanged since `lecture` was read;
/// `conflict` is the answer if it changed meanwhile. Returns the log position.
async fn append_after(
    state: &AppState,
    lecture: &Lecture,
    event: &Event,
    meta: teachback_events::Metadata,
    conflict: impl FnOnce() -> ApiError,
) -> Result<u64> {
    let stream = streams::lecture(lecture.id());
    let new = NewEvent::from_event(event, meta);
    let mut expected = lecture.version;
    // The pipeline may record processing (a transcript of the segment just uploaded) between
    // the read and this append. Those events do not change what was decided from the
    // recording's state, so they are stepped over; anything else is a real conflict.
    let mut attempts = 0;
    let appended = loop {
        match state
            .store
            .append_to_stream(&stream, ExpectedVersion::Exact(expected), vec![new.clone()])
            .await
        {
            Ok(appended) => break appended,
            Err(AppendError::WrongExpectedVersion { .. }) if attempts < 5 => {
                attempts += 1;
                match state
                    .store
                    .version_if_only(
                        &stream,
                        expected,
                        teachback_events::RecordedEvent::is_processing,
                    )
                    .await?
                {
                    Some(version) => expected = version,
                    None => return Err(conflict()),
                }
            }
            Err(AppendError::WrongExpectedVersion { .. }) => return Err(conflict()),
            Err(other) => return Err(other.into()),
        }
    };
    // Observers following the lecture here get the frame; a stored recording can be
    // transcribed, a finished lecture graded.
    if let Some(frame) = protocol::event_message(event, appended.version) {
        state.live.hub().publish(lecture.id(), Arc::new(frame));
    }
    state.pipeline.notify(lecture.id());
    Ok(appended.position)
}

/// `POST /api/v1/lectures/{id}/finish`.
pub async fn finish(
    state: State<AppState>,
    user: AuthUser,
    path: Path<Uuid>,
    meta: RequestMeta,
) -> Result<Response> {
    end(state, user, path, meta, Action::Finish).await
}

/// `POST /api/v1/lectures/{id}/cancel`.
pub async fn cancel(
    state: State<AppState>,
    user: AuthUser,
    path: Path<Uuid>,
    meta: RequestMeta,
) -> Result<Response> {
    end(state, user, path, meta, Action::Cancel).await
}

async fn end(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lecture_id): Path<Uuid>,
    RequestMeta(mut meta): RequestMeta,
    action: Action,
) -> Result<Response> {
    // A live lecture is ended by its actor, even when the learner's connection is gone.
    if let Some(result) = state.live.control(user, lecture_id, action).await {
        result?;
        let lecture = load_owned(&state, user, lecture_id).await?;
        return Ok(Json(view(&state, &lecture)).into_response());
    }
    let lecture = load_owned(&state, user, lecture_id).await?;
    let wanted = match action {
        Action::Finish => LectureStatus::Finished,
        _ => LectureStatus::Cancelled,
    };
    if lecture.status == wanted {
        return Ok(Json(view(&state, &lecture)).into_response());
    }
    if lecture.status.is_terminal() {
        return Err(ApiError::conflict(
            "lecture_ended",
            format!("the lecture is already {}", lecture.status.as_str()),
        ));
    }
    if lecture.mode() == LectureMode::Live {
        return Err(ApiError::conflict(
            "lecture_not_live",
            "the live lecture is not running on this server; reconnect to it first",
        ));
    }
    let mut lecture = lecture;
    if action == Action::Finish && lecture.segments.is_empty() {
        // A recording uploaded straight to the blob store (S3) is taken in now.
        if ingest_direct_upload(&state, &lecture, meta.clone())
            .await?
            .is_some()
        {
            lecture = load_owned(&state, user, lecture_id).await?;
        }
    }
    let segments = lecture.segments.len() as u32;
    let event = match action {
        Action::Finish => {
            if segments == 0 {
                return Err(ApiError::conflict(
                    "no_audio",
                    "upload the recording before finishing",
                ));
            }
            Event::LectureFinished(LectureFinished {
                lecture_id,
                duration_ms: None,
                segments,
                reason: FinishReason::Learner,
            })
        }
        _ => Event::LectureCancelled(LectureCancelled {
            lecture_id,
            segments,
        }),
    };
    meta.acting_user = Some(user);
    let position = append_after(&state, &lecture, &event, meta, || {
        ApiError::conflict(
            "lecture_changed",
            "the lecture changed meanwhile; read it and try again",
        )
    })
    .await?;
    let lecture = load_owned(&state, user, lecture_id).await?;
    Ok(with_position(
        StatusCode::OK,
        view(&state, &lecture),
        position,
    ))
}

/// `GET /api/v1/lectures/{id}/segments/{index}`: a stored segment's audio.
pub async fn segment_audio(
    State(state): State<AppState>,
    Path((lecture_id, index)): Path<(Uuid, u32)>,
    Query(query): Query<ViewQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    let lecture = load_viewable(&state, &headers, &query, lecture_id).await?;
    let segment = lecture
        .segments
        .iter()
        .find(|s| s.index == index)
        .ok_or_else(|| {
            ApiError::not_found("segment_not_found", "the lecture has no such segment")
        })?;
    let bytes: Bytes = state
        .blobs
        .get(&segment.blob_key)
        .await
        .map_err(|e| match e {
            crate::blob::BlobError::NotFound(_) => ApiError::new(
                axum::http::StatusCode::GONE,
                "audio_deleted",
                "this segment's audio was deleted (past the retention, or its learner was erased); \
                 the transcript and the grade remain",
            ),
            e => ApiError::Internal(anyhow::Error::new(e).context("reading a segment")),
        })?;
    let content_type = lecture.format().content_type();
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShareRequest {
    #[serde(default)]
    ttl_secs: Option<u64>,
}

/// `POST /api/v1/lectures/{id}/share`: a token that lets anyone holding it watch the lecture.
pub async fn share(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(lecture_id): Path<Uuid>,
    body: Bytes,
) -> Result<Json<Value>> {
    // The body is optional: none, or `{"ttlSecs": n}`.
    let request: ShareRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ShareRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!("the body must be empty or {{\"ttlSecs\": seconds}}: {e}"),
            )
        })?
    };
    load_owned(&state, user, lecture_id).await?;
    let ttl = request
        .ttl_secs
        .map_or(DEFAULT_SHARE_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl > MAX_SHARE_TTL {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_ttl",
            format!("ttlSecs must be between 1 and {}", MAX_SHARE_TTL.as_secs()),
        ));
    }
    let grant = state.keys.grant(lecture_id, ttl);
    let token = state.keys.sign_grant(Purpose::Share, &grant)?;
    let ws_base = state
        .public_url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    Ok(Json(json!({
        "token": token,
        "expiresAt": jiff::Timestamp::from_second(grant.exp).map_err(anyhow::Error::new)?,
        "watchUrl": format!("{ws_base}/api/v1/lectures/{lecture_id}/watch?share={token}"),
        "eventsUrl": format!("{}/api/v1/lectures/{lecture_id}/events?share={token}", state.public_url),
    })))
}

/// Why a feed stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedEnd {
    /// The lecture ended (or is not live on this server): everything was sent.
    Done,
    /// The observer fell too far behind the live frames; it should reconnect.
    Lagged,
}

/// What happened in a lecture and then what happens live, without gaps or duplicates: the
/// hub's frames are subscribed to *before* the log is read, and any frame whose stream version
/// was already sent is skipped. Frames after `after` (a stream version) only. It ends when
/// nothing more follows without someone asking (see [`ServerMessage::is_final`]). Token-level
/// deltas are for the learner's connection; observers get the coalesced `feedback` frames.
/// While the lecture is not being worked on here (an upload not yet sent, a lecture on another
/// server), the log is polled instead.
pub fn feed(
    state: AppState,
    lecture_id: Uuid,
    after: Option<u64>,
) -> impl Stream<Item = std::result::Result<Arc<ServerMessage>, FeedEnd>> + Send + 'static {
    async_stream::stream! {
        let mut hub = state.live.hub().subscribe(lecture_id);
        let stream = streams::lecture(lecture_id);
        let events = match state.store.read_stream_all(&stream).await {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "reading a lecture for a feed failed");
                yield Err(FeedEnd::Done);
                return;
            }
        };
        let mut last = after;
        let mut done = false;
        // An audio lecture that finished with no speech-to-text configured waits for one to
        // be configured: nothing more follows, so the feed ends there.
        let mut audio = false;
        let mut finished = false;
        for event in &events {
            let Ok(decoded) = event.decode() else { continue };
            let Some(message) = protocol::event_message(&decoded, event.stream_version) else { continue };
            done = ends(&message, done);
            note(&message, &mut audio, &mut finished);
            if last.is_none_or(|l| event.stream_version > l) {
                last = Some(event.stream_version);
                yield Ok(Arc::new(message));
            }
        }
        let version = events.last().map_or(0, |e| e.stream_version);
        yield Ok(Arc::new(ServerMessage::CaughtUp { lecture_id, version }));
        // Versions sent from here on (hub frames of two writers may arrive out of order), above
        // what the log gave.
        let floor = last;
        let mut sent = std::collections::BTreeSet::new();
        let give_up = tokio::time::Instant::now() + MAX_TAIL;
        loop {
            if done
                || (audio
                    && finished
                    && !state.pipeline.has_stt()
                    && !state.pipeline.is_active(lecture_id))
            {
                break;
            }
            let active = state.live.get(lecture_id).is_some() || state.pipeline.is_active(lecture_id);
            let poll = tokio::time::sleep(if active { 5 * POLL } else { POLL });
            tokio::select! {
                frame = hub.recv() => match frame {
                    Ok(message) => {
                        let Some(v) = message.version() else { continue };
                        if floor.is_some_and(|f| v <= f) || !sent.insert(v) {
                            continue;
                        }
                        last = Some(last.map_or(v, |l| l.max(v)));
                        done = ends(&message, done);
                        note(&message, &mut audio, &mut finished);
                        yield Ok(message);
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        yield Err(FeedEnd::Lagged);
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = poll => {
                    let from = last.map_or(0, |l| l + 1);
                    let Ok(events) = state.store.read_stream(&stream, from, Direction::Forwards, 1000).await else {
                        break;
                    };
                    for event in events {
                        let v = event.stream_version;
                        last = Some(last.map_or(v, |l| l.max(v)));
                        if floor.is_some_and(|f| v <= f) || !sent.insert(v) {
                            continue;
                        }
                        let Ok(decoded) = event.decode() else { continue };
                        let Some(message) = protocol::event_message(&decoded, v) else { continue };
                        done = ends(&message, done);
                        note(&message, &mut audio, &mut finished);
                        yield Ok(Arc::new(message));
                    }
                }
                () = tokio::time::sleep_until(give_up) => break,
            }
        }
        yield Err(FeedEnd::Done);
    }
}

/// How often a feed reads the log while the lecture is not being worked on here (five times
/// less often while it is: the hub brings its frames, the read only covers a hand-over).
const POLL: Duration = Duration::from_secs(1);

/// Notes whether the lecture records audio and whether it has finished.
fn note(message: &ServerMessage, audio: &mut bool, finished: &mut bool) {
    match message {
        ServerMessage::Started { format, .. } => {
            *audio = *format != teachback_events::AudioFormat::Text;
        }
        ServerMessage::State {
            state: "finished", ..
        } => *finished = true,
        _ => {}
    }
}

/// Whether the feed is over after `message`, given whether it was over before.
fn ends(message: &ServerMessage, before: bool) -> bool {
    match message {
        m if m.is_final() => true,
        ServerMessage::Regrading { .. } | ServerMessage::State { .. } => false,
        _ => before,
    }
}

fn lagged() -> ServerMessage {
    ServerMessage::fatal(
        "observer_lagged",
        "this observer fell behind the live frames; reconnect to catch up from the log",
    )
}

/// `GET /api/v1/lectures/{id}/watch`: a WebSocket that follows the lecture.
pub async fn watch(
    State(state): State<AppState>,
    Path(lecture_id): Path<Uuid>,
    Query(query): Query<ViewQuery>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response> {
    state
        .limits
        .check(crate::limits::Action::Sockets, ip, None)
        .await?;
    load_viewable(&state, &headers, &query, lecture_id).await?;
    Ok(ws
        .max_message_size(protocol::MAX_FRAME_BYTES)
        .on_upgrade(move |mut socket| async move {
            let _connection = crate::metrics::Connection::open("watch");
            let mut gate = crate::limits::MessageGate::new(state.limits.rules().messages);
            let mut shutting_down = state.live.shutting_down();
            let mut frames = std::pin::pin!(feed(state, lecture_id, None));
            let (code, reason) = loop {
                tokio::select! {
                    Ok(()) = shutting_down.wait_for(|s| *s).map(|r| r.map(|_| ())) => {
                        break (close::RESTART, "server restarting; reconnect to catch up");
                    }
                    next = frames.next() => match next {
                        Some(Ok(message)) => {
                            if socket.send(Message::Text(message.to_json().into())).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(FeedEnd::Lagged)) => {
                            let _ = socket.send(Message::Text(lagged().to_json().into())).await;
                            break (close::POLICY, "lagged");
                        }
                        Some(Err(FeedEnd::Done)) | None => break (close::NORMAL, "lecture over"),
                    },
                    incoming = socket.recv() => match incoming {
                        Some(Ok(Message::Text(text))) => {
                            // Observers only ping: past the rate, answers wait (briefly).
                            if let Some(at) = gate.count() {
                                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                            }
                            let pong = match serde_json::from_str::<protocol::ClientMessage>(&text) {
                                Ok(protocol::ClientMessage::Ping { nonce }) => ServerMessage::Pong { nonce },
                                _ => ServerMessage::error("read_only", "observers can only send `ping`"),
                            };
                            if socket.send(Message::Text(pong.to_json().into())).await.is_err() {
                                return;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    },
                }
            };
            let _ = socket
                .send(Message::Close(Some(CloseFrame { code, reason: reason.into() })))
                .await;
        }))
}

/// `GET /api/v1/lectures/{id}/events`: the same frames as `watch`, as Server-Sent Events. Each
/// event-backed frame carries its stream version as the SSE id, so a reconnecting `EventSource`
/// (which sends `Last-Event-ID`) continues where it stopped.
pub async fn events(
    State(state): State<AppState>,
    Path(lecture_id): Path<Uuid>,
    Query(query): Query<ViewQuery>,
    headers: HeaderMap,
) -> Result<Response> {
    load_viewable(&state, &headers, &query, lecture_id).await?;
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let shutdown_state = state.clone();
    let stream = feed(state, lecture_id, after).map(|item| {
        let event = match item {
            Ok(message) => {
                let event = SseEvent::default().data(message.to_json());
                match message.version() {
                    Some(v) => event.id(v.to_string()),
                    None => event,
                }
            }
            Err(FeedEnd::Lagged) => SseEvent::default().data(lagged().to_json()),
            Err(FeedEnd::Done) => SseEvent::default().event("end").data("{}"),
        };
        Ok::<_, std::convert::Infallible>(event)
    });
    Ok(Sse::new(super::until_shutdown(&shutdown_state, stream))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
