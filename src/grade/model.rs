//! What a grader takes and what it gives back, shared by the LLM grader and the rubric grader.

use serde::{Deserialize, Serialize};

/// Everything a grader knows about one lecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GradeInput {
    /// The topic's title in the lecture's language (or the best other language available).
    pub topic_title: String,
    pub topic_description: String,
    /// The concepts a good explanation covers, in the lecture's language.
    pub key_concepts: Vec<String>,
    /// ISO 639-1 code of the lecture (`ko`, `en`); feedback is written in it.
    pub language: String,
    /// What the learner said (or typed).
    pub transcript: String,
    /// Length of the audio in milliseconds; `None` for text lectures or unknown lengths.
    pub duration_ms: Option<u64>,
}

/// Sub-scores, each 0–100 (the event schema's type).
pub use teachback_events::SubScores;

/// A grade: the score, its parts, and the feedback texts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grade {
    /// 0–100.
    pub score: u8,
    pub sub_scores: SubScores,
    /// The feedback as prose for the learner (what streams to them).
    pub feedback: String,
    pub strengths: Vec<String>,
    pub improvements: Vec<String>,
    pub misconceptions: Vec<String>,
}
