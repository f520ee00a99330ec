//! Graders: the LLM grader's prompt and output handling ([`llm`]) and the built-in rubric grader
//! ([`rubric`]), over one input and output shape ([`model`]).

pub mod llm;
pub mod model;
pub mod rubric;

pub use model::{Grade, GradeInput};
use teachback_events::TopicPublished;

/// A localised text in `language`, else English, else Korean, else any.
fn pick<'a, T>(map: &'a std::collections::BTreeMap<String, T>, language: &str) -> Option<&'a T> {
    map.get(language)
        .or_else(|| map.get("en"))
        .or_else(|| map.get("ko"))
        .or_else(|| map.values().next())
}

/// What a grader is given for a lecture on `topic`.
pub fn input(
    topic: &TopicPublished,
    language: &str,
    transcript: &str,
    duration_ms: Option<u64>,
) -> GradeInput {
    GradeInput {
        topic_title: pick(&topic.title, language).cloned().unwrap_or_default(),
        topic_description: pick(&topic.description, language)
            .cloned()
            .unwrap_or_default(),
        key_concepts: pick(&topic.key_concepts, language)
            .cloned()
            .unwrap_or_default(),
        language: language.to_owned(),
        transcript: transcript.to_owned(),
        duration_ms,
    }
}
