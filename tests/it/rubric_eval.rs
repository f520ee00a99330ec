//! The rubric grader on the evaluation set `tests/data/rubric_pairs.json`: the same topic
//! explained well and explained with a misconception or missing concepts, in Korean and English.
//! The better explanation must score higher in at least 90% of pairs (docs/rubric-eval.md).

use teachback::grade::rubric::{EvalPair, evaluate};

#[test]
fn the_rubric_grader_prefers_the_better_explanation_in_at_least_90_percent_of_pairs() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rubric_pairs.json");
    let pairs: Vec<EvalPair> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(pairs.len() >= 40, "{} pairs", pairs.len());
    for language in ["en", "ko"] {
        let these: Vec<EvalPair> = pairs
            .iter()
            .filter(|p| p.language == language)
            .cloned()
            .collect();
        assert!(these.len() >= 20, "{language}: {} pairs", these.len());
        let (wrong, total) = evaluate(&these);
        let right = total - wrong.len();
        assert!(
            right * 10 >= total * 9,
            "{language}: {right}/{total}; wrong: {wrong:?}"
        );
    }
    let (wrong, total) = evaluate(&pairs);
    eprintln!(
        "rubric grader: {}/{total} pairs ranked correctly",
        total - wrong.len()
    );
    assert!((total - wrong.len()) * 10 >= total * 9, "wrong: {wrong:?}");
}
