//! The built-in rubric grader: deterministic, offline, pure Rust (`std` and
//! `unicode-normalization`; serde only to read the evaluation set). It does not know what is true;
//! it measures what an explanation looks like and says so in its feedback. How well it ranks
//! paired explanations is measured in `docs/rubric-eval.md`.
//!
//! # Method
//! Text is NFKC-normalised, lowercased and stripped of punctuation (apostrophes are dropped, so
//! `doesn't` becomes `doesnt`). Korean (`ko`) is read as eojeol (space-separated words); anything
//! else as English.
//!
//! - **Coverage → completeness.** English: each key concept is reduced to its content words
//!   (stopwords dropped, light stemming of plural/-ing/-ed/-ment, a tiny generic alias table);
//!   a word counts when the transcript has it, or a word sharing a long prefix. Korean: common
//!   particles (은/는/이/가/을/를/의/에/에서/와/과/로/으로/도/만 …) are stripped and each concept
//!   word scores the share of its syllable bigrams found in the transcript. A concept is covered
//!   when its words' mean score is at least 0.6; an uncovered one earns half its partial score.
//!   `completeness` = 100 × mean concept value.
//! - **Accuracy** (a proxy, never a fact check) = 30 + 70 × coverage, minus 15 per key concept that
//!   appears negated ("doesn't matter", "않아요", "상관없") within three content words on the side
//!   the negation governs ("no X" what follows; Korean negation what precedes), or reversed
//!   through a generic antonym ("depends on" for "independent of", "내려요" for "인상"), minus 5
//!   per hedge ("I think", "maybe", "not sure", "모르겠", "아마", "것 같") up to four, minus 3 per
//!   absolute claim ("never", "at all", "절대", "전혀") up to four. Negated or reversed concepts
//!   are reported as *possible* misconceptions.
//! - **Structure** = 10 + definition 20 + example 20 + reason 20 (+5 for two or more) +
//!   comparison/contrast 15 + ordering words 10, capped at 100.
//! - **Clarity** = 100 − fillers (250 × fillers per word, at most 35) − vague words (3 each, at
//!   most 12) − immediate repetitions (4 each, at most 16) − very short or very long sentences
//!   (at most 20) − pace. Pace is judged only when `duration_ms` is known: outside 110–170
//!   words/min (English) or 70–140 eojeol/min (Korean) costs 5–15 points and is named in the
//!   improvements.
//! - **Score** = 0.35 accuracy + 0.30 completeness + 0.20 clarity + 0.15 structure, clamped to
//!   0–100. Transcripts shorter than 40 words (25 eojeol) have every sub-score scaled down in
//!   proportion, so an empty one scores 0.
//!
//! Feedback is written in Korean when `language == "ko"` and in English otherwise, names the
//! covered and missing concepts, and says it came from this rubric grader.

use std::collections::{BTreeSet, HashSet};

use unicode_normalization::UnicodeNormalization;

use super::model::{Grade, GradeInput, SubScores};

/// The grader's name, as recorded with a grade.
pub const GRADER: &str = "rubric";

const W_ACCURACY: f64 = 0.35;
const W_COMPLETENESS: f64 = 0.30;
const W_CLARITY: f64 = 0.20;
const W_STRUCTURE: f64 = 0.15;

/// Mean word score at which a concept counts as covered (or mentioned in a clause).
const COVER: f64 = 0.6;
/// How many content words may separate a negation from the concept it negates.
const NEGATION_WINDOW: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    En,
    Ko,
}

impl Lang {
    fn of(code: &str) -> Self {
        if code.trim().eq_ignore_ascii_case("ko") || code.to_ascii_lowercase().starts_with("ko-") {
            Lang::Ko
        } else {
            Lang::En
        }
    }

    /// Below this many words (eojeol for Korean) every sub-score is scaled down.
    fn min_words(self) -> f64 {
        match self {
            Lang::En => 40.0,
            Lang::Ko => 25.0,
        }
    }

    /// Comfortable speaking pace, words (eojeol) per minute.
    fn pace_band(self) -> (f64, f64) {
        match self {
            Lang::En => (110.0, 170.0),
            Lang::Ko => (70.0, 140.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Word lists. All generic: nothing here is keyed to a particular topic or data set.
// ---------------------------------------------------------------------------------------------

#[rustfmt::skip]
const EN_STOPWORDS: &[&str] = &[
    "a", "an", "the", "of", "to", "in", "on", "at", "for", "and", "or", "is", "are", "was", "were",
    "be", "been", "being", "it", "its", "this", "that", "these", "those", "with", "as", "by",
    "from", "into", "over", "under", "than", "then", "so", "such", "what", "which", "who", "whom",
    "how", "when", "where", "why", "there", "here", "do", "does", "did", "have", "has", "had",
    "can", "could", "would", "should", "will", "may", "might", "must", "i", "you", "he", "she",
    "we", "they", "me", "my", "your", "our", "their", "them", "us", "his", "her", "about", "up",
    "out", "just", "also", "very", "really", "quite", "some", "any", "each", "get", "got", "like",
    "well", "yeah", "um", "uh", "erm", "hmm", "basically", "actually", "even", "still", "if", "s",
    "im", "youre", "thats", "its", "theres", "lets", "one", "way", "thing", "things",
];

#[rustfmt::skip]
const EN_NEGATIONS: &[&str] = &[
    "not", "no", "never", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "cant",
    "cannot", "wont", "wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "nothing", "none",
    "neither", "nor", "irrelevant", "unrelated",
];

/// Generic antonyms (as stems): a concept word on the left is contradicted by a word on the right.
#[rustfmt::skip]
const EN_ANTONYMS: &[(&str, &str)] = &[
    ("independent", "depend"), ("increas", "decreas"), ("decreas", "increas"), ("rais", "lower"),
    ("higher", "lower"), ("lower", "higher"), ("more", "less"), ("less", "more"),
    ("faster", "slower"), ("slower", "faster"), ("befor", "after"), ("after", "befor"),
    ("same", "different"), ("different", "same"), ("reliabl", "unreliabl"), ("sort", "unsort"),
    ("posit", "negat"), ("negat", "posit"), ("abov", "below"), ("below", "abov"),
    ("insid", "outsid"), ("outsid", "insid"), ("absorb", "emit"), ("larger", "smaller"),
    ("smaller", "larger"), ("strong", "weak"), ("weak", "strong"),
];

/// Generic aliases between stems (irregular forms).
const EN_ALIASES: &[(&str, &str)] = &[("half", "halv"), ("log", "logarithm")];

#[rustfmt::skip]
const EN_HEDGES: &[&str] = &[
    "i think", "maybe", "not sure", "i guess", "probably", "i dont know", "dont really know",
    "or something", "i believe", "if i remember", "i heard",
];

#[rustfmt::skip]
const EN_ABSOLUTES: &[&str] = &[
    "never", "at all", "thats it", "simple as that", "the whole", "forever", "no matter what",
    "every single", "100 percent",
];

const EN_FILLER_WORDS: &[&str] = &["um", "uh", "erm", "er", "uhm", "hmm", "ah", "eh", "mm"];
const EN_FILLER_PHRASES: &[&str] = &["you know", "i mean", "so yeah"];
#[rustfmt::skip]
const EN_VAGUE: &[&str] = &[
    "basically", "stuff", "kind of", "sort of", "pretty much", "whatever", "something like that",
    "things like that",
];

#[rustfmt::skip]
const EN_DEFINITION: &[&str] = &[
    "means", "is called", "are called", "refers to", "defined as", "is defined", "in other words",
    "that is", "is when", "is the", "is a", "is an", "are the",
];
#[rustfmt::skip]
const EN_EXAMPLE: &[&str] = &[
    "for example", "for instance", "e g", "such as", "imagine", "say you", "lets say", "consider",
    "like when",
];
#[rustfmt::skip]
const EN_REASON: &[&str] = &[
    "because", "so that", "therefore", "thats why", "which means", "this means", "as a result",
    "due to", "the reason", "thus", "hence", "since", "otherwise", "that way",
];
#[rustfmt::skip]
const EN_CONTRAST: &[&str] = &[
    "but", "however", "on the other hand", "whereas", "while", "instead", "unlike", "compared",
    "in contrast", "than", "opposite", "versus", "vs", "difference", "both",
];
#[rustfmt::skip]
const EN_SEQUENCE: &[&str] = &[
    "first", "firstly", "second", "secondly", "then", "next", "finally", "after that", "lastly",
    "to start", "step", "eventually", "afterwards", "at the end",
];

/// Korean particles, longest first. Single-syllable ones are only stripped when two syllables
/// remain, so that `변이` or `판이` keep their stems intact.
#[rustfmt::skip]
const KO_PARTICLES: &[&str] = &[
    "에서는", "에게서", "으로는", "으로도", "에서도", "이라고", "이라는", "이라서", "이랑", "까지", "부터", "에서", "에게", "한테",
    "으로", "처럼", "보다", "하고", "이나", "라고", "라는", "라서", "들이", "들은", "들을", "들의", "들도", "에는", "와는", "과는",
    "은", "는", "이", "가", "을", "를", "의", "에", "와", "과", "로", "도", "만", "랑", "들",
];

#[rustfmt::skip]
const KO_STOPWORDS: &[&str] = &[
    "더", "및", "등", "것", "수", "그", "이", "저", "또", "또는", "있는", "하는", "되는", "같은", "때", "중", "안의",
];

/// Fragments of an eojeol that negate it.
const KO_NEGATION_PARTS: &[&str] = &["않", "없", "아니", "상관없", "관계없"];
/// Whole eojeol that negate (or, as intensifiers, come with a negation).
const KO_NEGATION_WORDS: &[&str] = &["안", "못", "별로", "전혀", "절대"];

/// Generic "up"/"down" word groups for Korean reversals (raise ↔ lower, increase ↔ decrease).
#[rustfmt::skip]
const KO_UP: &[&str] = &[
    "인상", "올리", "올려", "올린", "높이", "높여", "높인", "증가", "늘어", "늘리", "늘려",
];
#[rustfmt::skip]
const KO_DOWN: &[&str] = &[
    "인하", "내리", "내려", "내린", "낮추", "낮춰", "낮춘", "감소", "줄어", "줄이", "줄여",
];

#[rustfmt::skip]
const KO_HEDGES: &[&str] = &[
    "모르겠", "아마", "것 같", "거 같", "확실하지", "잘 모르", "제 생각에", "고 들었", "대요", "듯해요", "듯합니다",
];
const KO_ABSOLUTES: &[&str] = &["절대", "전혀", "무조건", "언제나", "전부"];

#[rustfmt::skip]
const KO_FILLER_WORDS: &[&str] = &[
    "음", "어", "흠", "에", "아", "저기", "뭐지", "뭐랄까", "막", "그니까",
];
const KO_VAGUE: &[&str] = &["그냥", "뭔가", "대충", "약간", "이런 거", "그런 거"];

#[rustfmt::skip]
const KO_DEFINITION: &[&str] = &[
    "이란", "란 ", "라고 해요", "라고 합니다", "라고 하는데", "라고 하고", "뜻", "의미", "말해요", "말합니다", "정의",
];
#[rustfmt::skip]
const KO_EXAMPLE: &[&str] = &[
    "예를 들어", "예를 들면", "예시", "예로", "예컨대", "가령", "이를테면",
];
#[rustfmt::skip]
const KO_REASON: &[&str] = &[
    "왜냐하면", "때문", "따라서", "그래서", "그러므로", "덕분", "므로", "거든요", "니까", "이유", "결과",
];
#[rustfmt::skip]
const KO_CONTRAST: &[&str] = &[
    "반면", "반대로", "하지만", "그런데", "그러나", "다만", "보다", "차이", "달리", "대신", "비해", "비교", "둘 다",
];
#[rustfmt::skip]
const KO_SEQUENCE: &[&str] = &[
    "먼저", "그다음", "다음으로", "마지막으로", "첫째", "둘째", "우선", "그 후", "이후", "결국", "처음에는", "나중에", "그 뒤", "단계",
];

// ---------------------------------------------------------------------------------------------
// Normalisation and tokens.
// ---------------------------------------------------------------------------------------------

/// NFKC, lowercase, punctuation to spaces (apostrophes dropped), whitespace collapsed.
fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.nfkc().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if matches!(c, '\'' | '\u{2019}' | '\u{2018}' | '`') {
            // `doesn't` → `doesnt`
        } else {
            out.push(' ');
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn tokens(normalized: &str) -> Vec<String> {
    normalized.split_whitespace().map(str::to_owned).collect()
}

fn is_hangul(c: char) -> bool {
    ('\u{AC00}'..='\u{D7A3}').contains(&c)
}

/// Light English stemming: plurals, -ing, -ed, -ment, final e.
fn stem_en(word: &str) -> String {
    if word.len() <= 3 || !word.chars().all(|c| c.is_ascii_alphabetic()) {
        return word.to_owned();
    }
    let mut s = word.to_owned();
    if s.ends_with("ies") && s.len() > 4 {
        s.truncate(s.len() - 3);
        s.push('y');
    } else if s.ends_with("sses")
        || s.ends_with("ches")
        || s.ends_with("shes")
        || s.ends_with("xes")
        || s.ends_with("zes")
    {
        s.truncate(s.len() - 2);
    } else if s.ends_with('s') && !s.ends_with("ss") && !s.ends_with("us") && !s.ends_with("is") {
        s.pop();
    }
    let mut cut = false;
    if s.ends_with("ing") && s.len() >= 6 {
        s.truncate(s.len() - 3);
        cut = true;
    } else if s.ends_with("ied") && s.len() >= 5 {
        s.truncate(s.len() - 3);
        s.push('y');
    } else if s.ends_with("ed") && s.len() >= 5 {
        s.truncate(s.len() - 2);
        cut = true;
    } else if s.ends_with("ment") && s.len() >= 8 {
        s.truncate(s.len() - 4);
    }
    if cut {
        let b = s.as_bytes();
        let n = b.len();
        if n >= 2 && b[n - 1] == b[n - 2] && !matches!(b[n - 1], b'l' | b's' | b'z') {
            s.pop();
        }
    }
    if s.ends_with('e') && s.len() >= 4 {
        s.pop();
    }
    s
}

/// Strips one trailing Korean particle (see [`KO_PARTICLES`]).
fn strip_particles(word: &str) -> String {
    let len = word.chars().count();
    for p in KO_PARTICLES {
        if let Some(rest) = word.strip_suffix(p) {
            let rest_len = rest.chars().count();
            let plen = p.chars().count();
            let min_rest = if plen == 1 { 2 } else { 1 };
            if rest_len >= min_rest && rest_len < len {
                return rest.to_owned();
            }
        }
    }
    word.to_owned()
}

fn key_of(lang: Lang, token: &str) -> String {
    match lang {
        Lang::En => stem_en(token),
        Lang::Ko => strip_particles(token),
    }
}

fn common_prefix_chars(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

/// Whether two English stems name the same word.
fn stems_match(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if EN_ALIASES
        .iter()
        .any(|&(x, y)| (a == x && b == y) || (a == y && b == x))
    {
        return true;
    }
    let la = a.chars().count();
    let lb = b.chars().count();
    let p = common_prefix_chars(a, b);
    p >= 5 && p + 2 >= la.min(lb)
}

type Bigram = (char, char);

fn bigrams_of(word: &str) -> Vec<Bigram> {
    let cs: Vec<char> = word.chars().collect();
    cs.windows(2).map(|w| (w[0], w[1])).collect()
}

/// A stretch of text (a transcript, a sentence or a clause) prepared for matching.
struct Text {
    /// Normalised surface tokens.
    tokens: Vec<String>,
    /// English stems or Korean particle-stripped eojeol, one per token.
    keys: Vec<String>,
    /// Korean only: syllable bigrams within tokens and keys, and across adjacent keys.
    bigrams: HashSet<Bigram>,
}

impl Text {
    fn new(lang: Lang, normalized: &str) -> Self {
        let tokens = tokens(normalized);
        let keys: Vec<String> = tokens.iter().map(|t| key_of(lang, t)).collect();
        let mut bigrams = HashSet::new();
        if lang == Lang::Ko {
            for t in tokens.iter().chain(keys.iter()) {
                bigrams.extend(bigrams_of(t));
            }
            for pair in keys.windows(2) {
                if let (Some(a), Some(b)) = (pair[0].chars().last(), pair[1].chars().next()) {
                    bigrams.insert((a, b));
                }
            }
        }
        Text {
            tokens,
            keys,
            bigrams,
        }
    }
}

/// One content word of a key concept.
#[derive(Debug, Clone)]
struct ConceptWord {
    key: String,
    bigrams: Vec<Bigram>,
}

#[derive(Debug, Clone)]
struct Concept {
    label: String,
    words: Vec<ConceptWord>,
}

fn concept_of(lang: Lang, label: &str) -> Concept {
    let mut seen = BTreeSet::new();
    let mut words = Vec::new();
    for t in tokens(&normalize(label)) {
        let stop = match lang {
            Lang::En => EN_STOPWORDS.contains(&t.as_str()),
            Lang::Ko => KO_STOPWORDS.contains(&t.as_str()),
        };
        if stop {
            continue;
        }
        let key = key_of(lang, &t);
        if lang == Lang::Ko && KO_STOPWORDS.contains(&key.as_str()) {
            continue;
        }
        if seen.insert(key.clone()) {
            let bigrams = bigrams_of(&key);
            words.push(ConceptWord { key, bigrams });
        }
    }
    Concept {
        label: label.trim().to_owned(),
        words,
    }
}

/// Whether a single-syllable Korean concept word matches one eojeol.
fn ko_single_matches(word: &str, token: &str, key: &str) -> bool {
    if key == word || token == word {
        return true;
    }
    token
        .strip_prefix(word)
        .is_some_and(|rest| KO_PARTICLES.contains(&rest))
}

/// How well one concept word appears in a text, 0–1.
fn word_score(lang: Lang, w: &ConceptWord, text: &Text) -> f64 {
    match lang {
        Lang::En => {
            if text.keys.iter().any(|k| stems_match(&w.key, k)) {
                1.0
            } else {
                0.0
            }
        }
        Lang::Ko => {
            if w.bigrams.is_empty() {
                let hit = text
                    .tokens
                    .iter()
                    .zip(&text.keys)
                    .any(|(t, k)| ko_single_matches(&w.key, t, k));
                if hit { 1.0 } else { 0.0 }
            } else {
                let found = w
                    .bigrams
                    .iter()
                    .filter(|b| text.bigrams.contains(b))
                    .count();
                found as f64 / w.bigrams.len() as f64
            }
        }
    }
}

/// Mean word score of a concept in a text.
fn concept_score(lang: Lang, c: &Concept, text: &Text) -> f64 {
    if c.words.is_empty() {
        return 0.0;
    }
    c.words
        .iter()
        .map(|w| word_score(lang, w, text))
        .sum::<f64>()
        / c.words.len() as f64
}

/// Token positions where a concept word appears.
fn word_positions(lang: Lang, w: &ConceptWord, text: &Text) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, (t, k)) in text.tokens.iter().zip(&text.keys).enumerate() {
        let hit = match lang {
            Lang::En => stems_match(&w.key, k),
            Lang::Ko => {
                if w.bigrams.is_empty() {
                    ko_single_matches(&w.key, t, k)
                } else {
                    let own: HashSet<Bigram> =
                        bigrams_of(t).into_iter().chain(bigrams_of(k)).collect();
                    let found = w.bigrams.iter().filter(|b| own.contains(b)).count();
                    found as f64 / w.bigrams.len() as f64 >= 0.5
                }
            }
        };
        if hit {
            out.push(i);
        }
    }
    out
}

/// Which side of a negation the negated words are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Either side ("X doesn't matter", "doesn't need X").
    Both,
    /// Only what follows ("no X", "nothing to do with X").
    Forward,
    /// Only what precedes (Korean: the negation ends the clause; "A가 아니라 B" negates A).
    Backward,
}

/// Whether token `i` negates, and in which direction.
fn negation_at(lang: Lang, tokens: &[String], i: usize) -> Option<Scope> {
    let t = tokens[i].as_str();
    let next = tokens.get(i + 1).map(String::as_str);
    let prev = i.checked_sub(1).map(|j| tokens[j].as_str());
    match lang {
        Lang::En => {
            if !EN_NEGATIONS.contains(&t) {
                return None;
            }
            // "not only", "not just": not a negation of what follows.
            if t == "not" && matches!(next, Some("only" | "just" | "merely")) {
                return None;
            }
            if matches!(t, "no" | "nothing" | "none") {
                Some(Scope::Forward)
            } else {
                Some(Scope::Both)
            }
        }
        Lang::Ko => {
            // "없이" is "without", not a denial.
            if t.ends_with("없이") {
                return None;
            }
            // "뿐만 아니라" / "뿐 아니라": "not only … but also".
            if t.starts_with("아니라")
                && prev.is_some_and(|p| p.ends_with('뿐') || p.ends_with("뿐만"))
            {
                return None;
            }
            let neg =
                KO_NEGATION_WORDS.contains(&t) || KO_NEGATION_PARTS.iter().any(|p| t.contains(p));
            neg.then_some(Scope::Backward)
        }
    }
}

/// Clause words that announce the converse case ("conversely …", "반대로 …"); a reversed
/// concept there is the speaker contrasting, not contradicting.
fn announces_converse(lang: Lang, normalized: &str) -> bool {
    match lang {
        Lang::En => [
            "opposite",
            "conversely",
            "on the other hand",
            "in contrast",
            "the other way",
        ]
        .iter()
        .any(|m| count_phrase(normalized, m) > 0),
        Lang::Ko => ["반대로", "반면", "거꾸로"]
            .iter()
            .any(|m| count_fragment(normalized, m) > 0),
    }
}

/// Tokens that do not count towards the distance between a negation and a concept.
fn is_skippable(lang: Lang, token: &str) -> bool {
    match lang {
        Lang::En => EN_STOPWORDS.contains(&token) && !EN_NEGATIONS.contains(&token),
        Lang::Ko => KO_FILLER_WORDS.contains(&token),
    }
}

/// Counts whole-phrase occurrences in a normalised text.
fn count_phrase(normalized: &str, phrase: &str) -> usize {
    let hay = format!(" {normalized} ");
    let p = normalize(phrase);
    if p.is_empty() {
        return 0;
    }
    hay.matches(&format!(" {p} ")).count()
}

/// Counts occurrences of a fragment anywhere (Korean markers attach to words).
fn count_fragment(normalized: &str, fragment: &str) -> usize {
    let hay = format!(" {normalized} ");
    hay.matches(fragment).count()
}

fn count_markers(lang: Lang, normalized: &str, markers: &[&str]) -> usize {
    markers
        .iter()
        .map(|m| match lang {
            Lang::En => count_phrase(normalized, m),
            Lang::Ko => count_fragment(normalized, m),
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Sentences and clauses.
// ---------------------------------------------------------------------------------------------

fn split_sentences(lang: Lang, text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let has_punct = chars
        .iter()
        .any(|c| matches!(c, '.' | '!' | '?' | '。' | '？' | '！' | '\n'));
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        cur.push(c);
        let next_is_space = chars.get(i + 1).is_none_or(|n| n.is_whitespace());
        let end = match c {
            '!' | '?' | '。' | '？' | '！' | '\n' => true,
            '.' => next_is_space,
            _ => false,
        };
        if end {
            push_sentence(&mut out, &cur);
            cur.clear();
        }
    }
    push_sentence(&mut out, &cur);
    if !has_punct && lang == Lang::Ko {
        // Unpunctuated speech-to-text: end a sentence after a final ending.
        let mut split = Vec::new();
        for s in out {
            let mut cur = Vec::new();
            for w in s.split_whitespace() {
                cur.push(w);
                if w.ends_with('요') || w.ends_with('다') || w.ends_with('죠') {
                    split.push(cur.join(" "));
                    cur.clear();
                }
            }
            if !cur.is_empty() {
                split.push(cur.join(" "));
            }
        }
        return split;
    }
    out
}

fn push_sentence(out: &mut Vec<String>, s: &str) {
    let t = s.trim();
    if t.chars().any(char::is_alphanumeric) {
        out.push(t.to_owned());
    }
}

/// A clause: the speaker's words (for quoting) and their normalised form (for matching).
struct Clause {
    raw: String,
    norm: String,
}

/// Splits a sentence into clauses at commas, semicolons and conjunctions that start a new clause
/// (English "but", "whereas", relative "who"/"which" …; Korean "-지만", "-는데", "반면").
fn split_clauses(lang: Lang, sentence: &str) -> Vec<Clause> {
    fn flush(out: &mut Vec<Clause>, raw: &mut Vec<&str>, norm: &mut Vec<String>) {
        if !norm.is_empty() {
            out.push(Clause {
                raw: raw.join(" "),
                norm: norm.join(" "),
            });
        }
        raw.clear();
        norm.clear();
    }
    let mut out = Vec::new();
    for part in sentence.split([',', ';', ':', '—', '–', '，']) {
        let mut raw: Vec<&str> = Vec::new();
        let mut norm: Vec<String> = Vec::new();
        for w in part.split_whitespace() {
            let n = normalize(w);
            let boundary_before = lang == Lang::En
                && matches!(
                    n.as_str(),
                    "but"
                        | "whereas"
                        | "although"
                        | "though"
                        | "however"
                        | "who"
                        | "which"
                        | "where"
                        | "whose"
                );
            if boundary_before {
                flush(&mut out, &mut raw, &mut norm);
            }
            let boundary_after = lang == Lang::Ko
                && (n.ends_with("지만") || n.ends_with("는데") || n.ends_with("반면"));
            raw.push(w);
            if !n.is_empty() {
                norm.push(n);
            }
            if boundary_after {
                flush(&mut out, &mut raw, &mut norm);
            }
        }
        flush(&mut out, &mut raw, &mut norm);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Analysis.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct StructureHits {
    definition: bool,
    example: bool,
    reasons: usize,
    contrast: bool,
    sequence: bool,
}

#[derive(Debug, Clone)]
struct Flag {
    concept: String,
    excerpt: String,
}

#[derive(Debug)]
struct Analysis {
    lang: Lang,
    words: usize,
    covered: Vec<String>,
    missing: Vec<String>,
    coverage: f64,
    flags: Vec<Flag>,
    hedges: usize,
    absolutes: usize,
    structure: StructureHits,
    fillers: usize,
    vague: usize,
    repeats: usize,
    short_sentences: usize,
    long_sentences: usize,
    /// Words (eojeol) per minute, when the duration is known.
    pace: Option<f64>,
}

fn concepts_for(lang: Lang, input: &GradeInput) -> Vec<Concept> {
    let mut concepts: Vec<Concept> = input
        .key_concepts
        .iter()
        .filter(|c| !c.trim().is_empty())
        .map(|c| concept_of(lang, c))
        .filter(|c| !c.words.is_empty())
        .collect();
    if concepts.is_empty() {
        // No key concepts: fall back to the title's and description's content words.
        let source = format!("{} {}", input.topic_title, input.topic_description);
        let mut seen = BTreeSet::new();
        for w in concept_of(lang, &source).words {
            if w.key.chars().count() >= 2 && seen.insert(w.key.clone()) {
                concepts.push(Concept {
                    label: w.key.clone(),
                    words: vec![w],
                });
            }
            if concepts.len() >= 6 {
                break;
            }
        }
    }
    concepts
}

fn find_flags(lang: Lang, concepts: &[Concept], sentences: &[String]) -> Vec<Flag> {
    let mut flags: Vec<Flag> = Vec::new();
    for sentence in sentences {
        for clause in split_clauses(lang, sentence) {
            let text = Text::new(lang, &clause.norm);
            // Content-token index of each token (skippable tokens share the next index).
            let mut content_idx = Vec::with_capacity(text.tokens.len());
            let mut n = 0usize;
            for t in &text.tokens {
                content_idx.push(n);
                if !is_skippable(lang, t) {
                    n += 1;
                }
            }
            let negs: Vec<(usize, Scope)> = (0..text.tokens.len())
                .filter_map(|i| negation_at(lang, &text.tokens, i).map(|s| (i, s)))
                .collect();
            let converse = announces_converse(lang, &clause.norm);
            for c in concepts {
                if flags.iter().any(|f| f.concept == c.label) {
                    continue;
                }
                let score = concept_score(lang, c, &text);
                let mentioned = if c.words.len() == 1 {
                    score >= 0.99
                } else {
                    score >= COVER
                };
                let mut hit = false;
                if mentioned && !negs.is_empty() {
                    let positions: Vec<usize> = c
                        .words
                        .iter()
                        .flat_map(|w| word_positions(lang, w, &text))
                        .collect();
                    hit = positions.iter().any(|&p| {
                        negs.iter().any(|&(q, scope)| {
                            let (cp, cq) = (content_idx[p], content_idx[q]);
                            let in_scope = match scope {
                                Scope::Both => true,
                                Scope::Forward => q < p,
                                Scope::Backward => p < q,
                            };
                            in_scope && cp.abs_diff(cq) <= NEGATION_WINDOW
                        })
                    });
                }
                if !hit && !converse && c.words.len() >= 2 {
                    hit = reversed(lang, c, &text);
                }
                if hit {
                    flags.push(Flag {
                        concept: c.label.clone(),
                        excerpt: excerpt(clause.raw.trim_end_matches(['.', '!', '?'])),
                    });
                }
            }
        }
    }
    // Report in the order of the key concepts.
    let mut ordered = Vec::new();
    for c in concepts {
        if let Some(f) = flags.iter().find(|f| f.concept == c.label) {
            ordered.push(f.clone());
        }
    }
    ordered
}

/// Whether a clause mentions the rest of a concept but with one of its words reversed.
fn reversed(lang: Lang, c: &Concept, text: &Text) -> bool {
    for (i, w) in c.words.iter().enumerate() {
        let others: Vec<&ConceptWord> = c
            .words
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, o)| o)
            .collect();
        let other_score = others
            .iter()
            .map(|o| word_score(lang, o, text))
            .sum::<f64>()
            / others.len() as f64;
        if other_score < 0.3 {
            continue;
        }
        let flipped = match lang {
            Lang::En => EN_ANTONYMS.iter().any(|&(a, b)| {
                stems_match(&w.key, a)
                    && text.keys.iter().any(|k| k.starts_with(b))
                    && !text.keys.iter().any(|k| stems_match(&w.key, k))
            }),
            Lang::Ko => {
                let has = |list: &[&str]| {
                    text.tokens
                        .iter()
                        .any(|t| list.iter().any(|p| t.contains(p)))
                };
                let up = KO_UP.iter().any(|p| w.key.contains(p));
                let down = KO_DOWN.iter().any(|p| w.key.contains(p));
                (up && has(KO_DOWN) && !has(KO_UP))
                    || (down && has(KO_UP) && !has(KO_DOWN))
                    || (w.key == "비례" && text.tokens.iter().any(|t| t.contains("반비례")))
                    || (w.key == "반비례"
                        && text
                            .tokens
                            .iter()
                            .any(|t| t.contains("비례") && !t.contains("반비례")))
            }
        };
        if flipped {
            return true;
        }
    }
    false
}

fn excerpt(clause: &str) -> String {
    const MAX: usize = 80;
    if clause.chars().count() <= MAX {
        clause.to_owned()
    } else {
        let mut s: String = clause.chars().take(MAX).collect();
        s.push('…');
        s
    }
}

fn structure_hits(
    lang: Lang,
    concepts: &[Concept],
    title: &str,
    sentences: &[String],
) -> StructureHits {
    let mut hits = StructureHits::default();
    let title_words = concept_of(lang, title).words;
    for s in sentences {
        let norm = normalize(s);
        let (def, ex, rea, con, seq) = match lang {
            Lang::En => (
                EN_DEFINITION,
                EN_EXAMPLE,
                EN_REASON,
                EN_CONTRAST,
                EN_SEQUENCE,
            ),
            Lang::Ko => (
                KO_DEFINITION,
                KO_EXAMPLE,
                KO_REASON,
                KO_CONTRAST,
                KO_SEQUENCE,
            ),
        };
        if count_markers(lang, &norm, ex) > 0 {
            hits.example = true;
        }
        if count_markers(lang, &norm, rea) > 0 {
            hits.reasons += 1;
        }
        if count_markers(lang, &norm, con) > 0 {
            hits.contrast = true;
        }
        if count_markers(lang, &norm, seq) > 0 {
            hits.sequence = true;
        }
        if !hits.definition {
            hits.definition = is_definition(lang, &norm, def, concepts, &title_words);
        }
    }
    hits
}

/// A definition: an explicit marker ("means", "이란"), or a sentence that opens with a key concept
/// or title word and goes on with "is"/"are" (English) or ends in a copula (Korean).
fn is_definition(
    lang: Lang,
    norm: &str,
    markers: &[&str],
    concepts: &[Concept],
    title_words: &[ConceptWord],
) -> bool {
    let text = Text::new(lang, norm);
    let head_len = text.tokens.len().min(6);
    let head = Text::new(lang, &text.tokens[..head_len].join(" "));
    let opens_with_subject = concepts
        .iter()
        .flat_map(|c| c.words.iter())
        .chain(title_words.iter())
        .any(|w| word_score(lang, w, &head) >= 0.99);
    match lang {
        Lang::En => {
            let explicit = [
                "means",
                "is called",
                "are called",
                "refers to",
                "defined as",
                "in other words",
            ]
            .iter()
            .any(|m| count_phrase(norm, m) > 0);
            explicit
                || (opens_with_subject
                    && markers.iter().any(|m| {
                        let h = head.tokens.join(" ");
                        count_phrase(&h, m) > 0
                            || count_phrase(&h, "is") > 0
                            || count_phrase(&h, "are") > 0
                    }))
        }
        Lang::Ko => {
            let explicit = markers.iter().any(|m| count_fragment(norm, m) > 0);
            let first_is_topic = text.tokens.iter().take(3).any(|t| {
                t.ends_with('은') || t.ends_with('는') || t.ends_with("이란") || t.ends_with("란")
            });
            let copula = text.tokens.last().is_some_and(|t| {
                [
                    "예요",
                    "이에요",
                    "이다",
                    "입니다",
                    "거예요",
                    "것이다",
                    "뜻해요",
                    "말해요",
                ]
                .iter()
                .any(|e| t.ends_with(e))
            });
            explicit || (opens_with_subject && first_is_topic && copula)
        }
    }
}

/// A raw word with what touches it, for filler detection.
struct RawWord {
    norm: String,
    pause_before: bool,
    pause_after: bool,
}

fn raw_words(text: &str) -> Vec<RawWord> {
    let mut out = Vec::new();
    let mut prev_pause = true;
    for chunk in text.nfkc().collect::<String>().split_whitespace() {
        let norm = normalize(chunk);
        let last = chunk.chars().last().unwrap_or(' ');
        let pause_after = matches!(last, ',' | '.' | '!' | '?' | '…' | ';' | '，' | '。');
        if !norm.is_empty() {
            out.push(RawWord {
                norm,
                pause_before: prev_pause,
                pause_after,
            });
        }
        prev_pause = pause_after;
    }
    out
}

fn count_fillers(lang: Lang, text: &str, normalized: &str) -> usize {
    let words = raw_words(text);
    let mut n = 0;
    for (i, w) in words.iter().enumerate() {
        let filler = match lang {
            Lang::En => {
                EN_FILLER_WORDS.contains(&w.norm.as_str())
                    || (w.norm == "like" && (w.pause_after || w.pause_before))
            }
            Lang::Ko => {
                KO_FILLER_WORDS.contains(&w.norm.as_str())
                    || (w.norm == "그"
                        && (w.pause_after
                            || words.get(i + 1).is_some_and(|nx| {
                                KO_FILLER_WORDS.contains(&nx.norm.as_str()) || nx.norm == "그"
                            })))
            }
        };
        if filler {
            n += 1;
        }
    }
    if lang == Lang::En {
        n += EN_FILLER_PHRASES
            .iter()
            .map(|p| count_phrase(normalized, p))
            .sum::<usize>();
    }
    n
}

fn analyse(input: &GradeInput) -> Analysis {
    let lang = Lang::of(&input.language);
    let normalized = normalize(&input.transcript);
    let whole = Text::new(lang, &normalized);
    let words = whole.tokens.len();
    let sentences = split_sentences(lang, &input.transcript);
    let concepts = concepts_for(lang, input);

    let mut covered = Vec::new();
    let mut missing = Vec::new();
    let mut total = 0.0;
    for c in &concepts {
        let s = concept_score(lang, c, &whole);
        if s >= COVER {
            total += 1.0;
            covered.push(c.label.clone());
        } else {
            total += 0.5 * s;
            missing.push(c.label.clone());
        }
    }
    let coverage = if concepts.is_empty() {
        0.0
    } else {
        total / concepts.len() as f64
    };

    let flags = find_flags(lang, &concepts, &sentences);
    let (hedge_list, absolute_list) = match lang {
        Lang::En => (EN_HEDGES, EN_ABSOLUTES),
        Lang::Ko => (KO_HEDGES, KO_ABSOLUTES),
    };
    let hedges = count_markers(lang, &normalized, hedge_list);
    let absolutes = count_markers(lang, &normalized, absolute_list);
    let structure = structure_hits(lang, &concepts, &input.topic_title, &sentences);

    let fillers = count_fillers(lang, &input.transcript, &normalized);
    let vague = match lang {
        Lang::En => count_markers(lang, &normalized, EN_VAGUE),
        Lang::Ko => KO_VAGUE
            .iter()
            .map(|m| {
                if m.contains(' ') {
                    count_fragment(&normalized, m)
                } else {
                    whole.tokens.iter().filter(|t| t.as_str() == *m).count()
                }
            })
            .sum(),
    };
    let repeats = whole
        .tokens
        .windows(2)
        .filter(|w| w[0] == w[1] && !w[0].chars().all(|c| c.is_ascii_digit()))
        .count();

    let has_punct = input
        .transcript
        .chars()
        .any(|c| matches!(c, '.' | '!' | '?' | '。' | '？' | '！'));
    let (short_limit, long_limit) = match lang {
        Lang::En => (4, 40),
        Lang::Ko => (3, 25),
    };
    let mut short_sentences = 0;
    let mut long_sentences = 0;
    if has_punct || lang == Lang::Ko {
        for s in &sentences {
            let n = normalize(s).split_whitespace().count();
            if n < short_limit {
                short_sentences += 1;
            } else if n > long_limit {
                long_sentences += 1;
            }
        }
    }

    let pace = match input.duration_ms {
        Some(ms) if ms >= 5_000 && words > 0 => Some(words as f64 / (ms as f64 / 60_000.0)),
        _ => None,
    };

    Analysis {
        lang,
        words,
        covered,
        missing,
        coverage,
        flags,
        hedges,
        absolutes,
        structure,
        fillers,
        vague,
        repeats,
        short_sentences,
        long_sentences,
        pace,
    }
}

#[derive(Debug, Clone, Copy)]
struct Scores {
    accuracy: f64,
    completeness: f64,
    clarity: f64,
    structure: f64,
    pace_penalty: f64,
}

fn scores(a: &Analysis) -> Scores {
    let accuracy = 30.0 + 70.0 * a.coverage
        - 15.0 * a.flags.len() as f64
        - 5.0 * a.hedges.min(4) as f64
        - 3.0 * a.absolutes.min(4) as f64;
    let completeness = 100.0 * a.coverage;

    let h = a.structure;
    let mut structure = 10.0;
    if h.definition {
        structure += 20.0;
    }
    if h.example {
        structure += 20.0;
    }
    if h.reasons > 0 {
        structure += 20.0;
    }
    if h.reasons > 1 {
        structure += 5.0;
    }
    if h.contrast {
        structure += 15.0;
    }
    if h.sequence {
        structure += 10.0;
    }

    let words = a.words.max(1) as f64;
    let pace_penalty = match a.pace {
        Some(wpm) => {
            let (lo, hi) = a.lang.pace_band();
            let off = if wpm < lo {
                (lo - wpm) / lo
            } else if wpm > hi {
                (wpm - hi) / hi
            } else {
                0.0
            };
            if off > 0.0 {
                (5.0 + 30.0 * off).min(15.0)
            } else {
                0.0
            }
        }
        None => 0.0,
    };
    let clarity = 100.0
        - (250.0 * a.fillers as f64 / words).min(35.0)
        - (3.0 * a.vague as f64).min(12.0)
        - (4.0 * a.repeats as f64).min(16.0)
        - (3.0 * a.short_sentences as f64 + 6.0 * a.long_sentences as f64).min(20.0)
        - pace_penalty;

    let length = (a.words as f64 / a.lang.min_words()).min(1.0);
    let fit = |x: f64| (x * length).clamp(0.0, 100.0);
    Scores {
        accuracy: fit(accuracy),
        completeness: fit(completeness),
        clarity: fit(clarity),
        structure: fit(structure),
        pace_penalty,
    }
}

fn to_u8(x: f64) -> u8 {
    x.round().clamp(0.0, 100.0) as u8
}

/// Grades a lecture with the rubric. Deterministic: the same input always gives the same grade.
pub fn grade(input: &GradeInput) -> Grade {
    let a = analyse(input);
    let s = scores(&a);
    let total = W_ACCURACY * s.accuracy
        + W_COMPLETENESS * s.completeness
        + W_CLARITY * s.clarity
        + W_STRUCTURE * s.structure;
    let sub_scores = SubScores {
        accuracy: to_u8(s.accuracy),
        completeness: to_u8(s.completeness),
        clarity: to_u8(s.clarity),
        structure: to_u8(s.structure),
    };
    let score = to_u8(total);
    let title = input.topic_title.trim();
    feedback(&a, &s, score, sub_scores, title)
}

// ---------------------------------------------------------------------------------------------
// Feedback.
// ---------------------------------------------------------------------------------------------

fn quoted_list_en(items: &[String]) -> String {
    let q: Vec<String> = items.iter().map(|i| format!("“{i}”")).collect();
    match q.len() {
        0 => String::new(),
        1 => q[0].clone(),
        n => format!("{} and {}", q[..n - 1].join(", "), q[n - 1]),
    }
}

/// Whether the last syllable of a Korean-read word has a final consonant (받침).
fn has_batchim(s: &str) -> bool {
    match s.chars().rev().find(|c| c.is_alphanumeric()) {
        Some(c) if is_hangul(c) => (c as u32 - 0xAC00) % 28 != 0,
        Some(d) if d.is_ascii_digit() => matches!(d, '0' | '1' | '3' | '6' | '7' | '8'),
        Some(c) => matches!(c.to_ascii_lowercase(), 'l' | 'm' | 'n' | 'r'),
        None => false,
    }
}

/// The particle that fits after `word`: `with` after a final consonant, `without` otherwise.
fn josa<'a>(word: &str, with: &'a str, without: &'a str) -> &'a str {
    if has_batchim(word) { with } else { without }
}

/// The name of the best and of the weakest area (the first one on ties).
fn best_and_worst(sub: SubScores, names: [&'static str; 4]) -> (&'static str, &'static str) {
    let list = [
        (names[0], sub.accuracy),
        (names[1], sub.completeness),
        (names[2], sub.clarity),
        (names[3], sub.structure),
    ];
    let mut best = list[0];
    let mut worst = list[0];
    for item in list {
        if item.1 > best.1 {
            best = item;
        }
        if item.1 < worst.1 {
            worst = item;
        }
    }
    (best.0, worst.0)
}

/// Writes the feedback texts in the lecture's language (each message keeps both wordings side by
/// side).
fn feedback(a: &Analysis, s: &Scores, score: u8, sub: SubScores, title: &str) -> Grade {
    let ko = a.lang == Lang::Ko;
    let pick = |en: &str, k: &str| if ko { k.to_owned() } else { en.to_owned() };
    let list = |items: &[String]| {
        if ko {
            items.join(", ")
        } else {
            quoted_list_en(items)
        }
    };
    let topic = match (title.is_empty(), ko) {
        (false, _) => title.to_owned(),
        (true, false) => "the topic".to_owned(),
        (true, true) => "이 주제".to_owned(),
    };
    let all: Vec<String> = a.covered.iter().chain(&a.missing).cloned().collect();
    let rubric_line = pick(
        "This feedback was produced by the built-in rubric grader, which looks at key concepts, structure and delivery rather than checking the facts themselves.",
        "이 피드백은 사실 여부를 직접 확인하지 않고 핵심 개념, 구조, 전달력을 보는 내장 루브릭 채점기가 만들었어요.",
    );
    let misconceptions: Vec<String> = a
        .flags
        .iter()
        .map(|f| {
            if ko {
                format!(
                    "「{}」에 대한 오개념일 수 있어요. 이 개념을 부정하거나 반대로 말한 것 같아요(“{}”). 루브릭은 사실을 확인할 수 없으니 이 부분을 다시 확인해 보세요.",
                    f.concept, f.excerpt
                )
            } else {
                format!(
                    "Possible misconception about “{}”: it seems to be denied or reversed (“{}”). The rubric cannot verify facts, so check this point.",
                    f.concept, f.excerpt
                )
            }
        })
        .collect();
    let mut strengths = Vec::new();
    let mut improvements = Vec::new();

    if a.words == 0 || (a.words as f64) < a.lang.min_words() / 4.0 {
        let mut text = if ko {
            format!("「{topic}」 강의에는 채점할 내용이 거의 없어서 100점 만점에 {score}점이에요.")
        } else {
            format!(
                "There was almost nothing to grade in this lecture on {topic}, so it scored {score}/100."
            )
        };
        if !all.is_empty() {
            let l = list(&all);
            text.push_str(&if ko {
                format!(
                    " {l}{} 다루면서 여러 문장으로 설명해 보세요.",
                    josa(&l, "을", "를")
                )
            } else {
                format!(" Try explaining it in several full sentences that cover {l}.")
            });
        }
        text.push(' ');
        text.push_str(&rubric_line);
        improvements.push(if ko {
            format!(
                "「{topic}」{} 완전한 문장 여러 개로 설명해 보세요(어절 {}개).",
                josa(&topic, "을", "를"),
                a.words
            )
        } else {
            format!(
                "Explain {topic} in several full sentences (the transcript had {} words).",
                a.words
            )
        });
        return Grade {
            score,
            sub_scores: sub,
            feedback: text,
            strengths,
            improvements,
            misconceptions,
        };
    }

    // Strengths.
    if !a.covered.is_empty() {
        let l = list(&a.covered);
        strengths.push(if ko {
            format!("핵심 개념 {l}{} 다뤘어요.", josa(&l, "을", "를"))
        } else {
            format!("Covered the key concepts {l}.")
        });
    }
    let h = a.structure;
    if h.definition {
        strengths.push(pick(
            "Defined the terms you used.",
            "용어의 뜻을 정의했어요.",
        ));
    }
    if h.example {
        strengths.push(pick(
            "Gave a concrete example.",
            "구체적인 예시를 들었어요.",
        ));
    }
    if h.reasons > 0 {
        strengths.push(pick(
            "Explained why, not just what (“because”, “so that”, “therefore”).",
            "‘왜냐하면’, ‘때문에’, ‘따라서’처럼 이유를 설명했어요.",
        ));
    }
    if h.contrast {
        strengths.push(pick(
            "Compared or contrasted ideas.",
            "개념을 비교하거나 대조했어요.",
        ));
    }
    if a.fillers == 0 && a.words >= 15 {
        strengths.push(pick(
            "Spoke without filler words.",
            "‘음’, ‘어’ 같은 군말 없이 말했어요.",
        ));
    }
    if let Some(wpm) = a.pace.filter(|_| s.pace_penalty == 0.0) {
        strengths.push(if ko {
            format!("말하는 속도가 적당했어요(분당 약 {wpm:.0}어절).")
        } else {
            format!("Kept a comfortable pace (about {wpm:.0} words per minute).")
        });
    }

    // Improvements.
    if !a.missing.is_empty() {
        let l = list(&a.missing);
        improvements.push(if ko {
            format!("빠진 핵심 개념을 설명해 보세요: {l}.")
        } else {
            format!("Explain the missing key concepts: {l}.")
        });
    }
    if !h.example {
        improvements.push(pick(
            "Add a concrete example (“for example, …”).",
            "‘예를 들어’로 시작하는 구체적인 예시를 넣어 보세요.",
        ));
    }
    if h.reasons == 0 {
        improvements.push(pick(
            "Say why things happen (“because …”, “so that …”).",
            "‘왜냐하면’, ‘때문에’처럼 이유를 함께 말해 보세요.",
        ));
    }
    if !h.definition {
        improvements.push(pick(
            "Start by defining the main term (“X is …”, “X means …”).",
            "핵심 용어가 무엇인지 먼저 정의해 보세요(“○○이란 …이다”).",
        ));
    }
    if a.hedges > 0 {
        improvements.push(if ko {
            format!(
                "‘아마’, ‘것 같아요’, ‘모르겠어요’ 같은 불확실한 표현이 {}번 나왔어요. 그 부분을 확인하고 분명하게 말해 보세요.",
                a.hedges
            )
        } else {
            format!(
                "You hedged {} time(s) (“I think”, “maybe”, “not sure”); check those points and state them plainly.",
                a.hedges
            )
        });
    }
    if a.absolutes > 0 {
        improvements.push(pick(
            "Double-check absolute claims (“never”, “at all”, “that's it”).",
            "‘절대’, ‘전혀’ 같은 단정적인 표현이 정말 맞는지 확인해 보세요.",
        ));
    }
    if a.fillers >= 2 {
        improvements.push(if ko {
            format!(
                "‘음’, ‘어’ 같은 군말을 줄여 보세요: {}어절 중 {}번.",
                a.words, a.fillers
            )
        } else {
            format!(
                "Cut filler words (“um”, “uh”, “like”, “you know”): {} in {} words.",
                a.fillers, a.words
            )
        });
    }
    if a.repeats > 0 {
        improvements.push(pick(
            "Avoid repeating the same word twice in a row.",
            "같은 말을 연달아 반복하지 않도록 해 보세요.",
        ));
    }
    if a.long_sentences > 0 {
        improvements.push(pick(
            "Break very long sentences into shorter ones.",
            "너무 긴 문장은 짧게 나눠 보세요.",
        ));
    }
    if a.short_sentences > 1 {
        improvements.push(pick(
            "Join very short fragments into complete sentences.",
            "너무 짧은 조각 문장은 완전한 문장으로 이어 보세요.",
        ));
    }
    if let Some(wpm) = a.pace.filter(|_| s.pace_penalty > 0.0) {
        let (lo, hi) = a.lang.pace_band();
        let slow = wpm < lo;
        improvements.push(if ko {
            let how = if slow { "느렸어요" } else { "빨랐어요" };
            format!(
                "말하는 속도가 {how}(분당 약 {wpm:.0}어절). 분당 {lo:.0}–{hi:.0}어절 정도를 목표로 해 보세요."
            )
        } else {
            let how = if slow { "slowly" } else { "fast" };
            format!("You spoke {how} (about {wpm:.0} words per minute); aim for {lo:.0}–{hi:.0}.")
        });
    }

    // The prose: score, coverage, misconceptions or hedging, best and weakest area, provenance.
    let mut sentences = vec![if ko {
        format!(
            "「{topic}」 설명은 100점 만점에 {score}점이에요(정확성 {}, 완성도 {}, 명료성 {}, 구조 {}).",
            sub.accuracy, sub.completeness, sub.clarity, sub.structure
        )
    } else {
        format!(
            "Your explanation of {topic} scored {score}/100 (accuracy {}, completeness {}, clarity {}, structure {}).",
            sub.accuracy, sub.completeness, sub.clarity, sub.structure
        )
    }];
    let (covered, missing) = (list(&a.covered), list(&a.missing));
    if all.is_empty() {
        // No key concepts and nothing to fall back on: nothing to say about coverage.
    } else if a.missing.is_empty() {
        sentences.push(if ko {
            format!("핵심 개념 {}개를 모두 다뤘어요: {covered}.", all.len())
        } else {
            format!("You covered all {} key concepts: {covered}.", all.len())
        });
    } else if a.covered.is_empty() {
        sentences.push(if ko {
            format!(
                "핵심 개념({missing}){} 분명하게 드러나지 않았어요.",
                josa(&missing, "이", "가")
            )
        } else {
            format!("None of the key concepts ({missing}) came through clearly.")
        });
    } else {
        sentences.push(if ko {
            format!(
                "핵심 개념 {}개 중 {}개({covered})를 다뤘지만 {missing}{} 분명하게 설명하지 않았어요.",
                all.len(),
                a.covered.len(),
                josa(&missing, "은", "는")
            )
        } else {
            format!(
                "You covered {} of {} key concepts ({covered}) but did not clearly explain {missing}.",
                a.covered.len(),
                all.len()
            )
        });
    }
    if !a.flags.is_empty() {
        let names: Vec<String> = a.flags.iter().map(|f| f.concept.clone()).collect();
        let n = list(&names);
        sentences.push(if ko {
            format!(
                "{n}{} 부정하거나 반대로 말한 부분이 있는데, 루브릭은 사실을 확인할 수 없으니 오개념일 수 있는 부분으로 보고 다시 확인해 보세요.",
                josa(&n, "을", "를")
            )
        } else {
            format!(
                "Some statements seem to deny or reverse {n}; the rubric cannot check facts, so treat them as possible misconceptions and double-check."
            )
        });
    } else if a.hedges >= 2 {
        sentences.push(pick(
            "You hedged several times, which makes the explanation sound unsure.",
            "불확실한 표현이 여러 번 나와서 설명이 자신 없게 들려요.",
        ));
    }
    let names = if ko {
        ["정확성", "완성도", "명료성", "구조"]
    } else {
        ["accuracy", "completeness", "clarity", "structure"]
    };
    let (best, worst) = best_and_worst(sub, names);
    if best != worst {
        sentences.push(if ko {
            format!(
                "가장 좋은 영역은 {best}이고, 보완할 영역은 {worst}{}.",
                josa(worst, "이에요", "예요")
            )
        } else {
            format!("Your strongest area was {best}; the one to work on is {worst}.")
        });
    }
    sentences.push(rubric_line);

    Grade {
        score,
        sub_scores: sub,
        feedback: sentences.join(" "),
        strengths,
        improvements,
        misconceptions,
    }
}

// ---------------------------------------------------------------------------------------------
// The evaluation set.
// ---------------------------------------------------------------------------------------------

/// One pair of the evaluation set (tests/data/rubric_pairs.json).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalPair {
    pub id: String,
    pub language: String,
    pub topic: EvalTopic,
    pub better: String,
    pub worse: String,
    pub flaw: String,
}

/// The topic of an evaluation pair.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvalTopic {
    pub title: String,
    pub description: String,
    pub key_concepts: Vec<String>,
}

/// The grader inputs for both sides of a pair (better, worse). Durations are set from the word
/// count at a neutral pace (140 words/min in English, 100 eojeol/min in Korean), so pace is
/// judged but never decides a pair.
pub fn pair_inputs(pair: &EvalPair) -> (GradeInput, GradeInput) {
    let side = |transcript: &str| {
        let lang = Lang::of(&pair.language);
        let words = normalize(transcript).split_whitespace().count() as u64;
        let per_minute = match lang {
            Lang::En => 140,
            Lang::Ko => 100,
        };
        GradeInput {
            topic_title: pair.topic.title.clone(),
            topic_description: pair.topic.description.clone(),
            key_concepts: pair.topic.key_concepts.clone(),
            language: pair.language.clone(),
            transcript: transcript.to_owned(),
            duration_ms: Some(words * 60_000 / per_minute),
        }
    };
    (side(&pair.better), side(&pair.worse))
}

/// Grades both sides of every pair; returns (ids of pairs where better did NOT score strictly higher, total).
pub fn evaluate(pairs: &[EvalPair]) -> (Vec<String>, usize) {
    let mut wrong = Vec::new();
    for pair in pairs {
        let (better, worse) = pair_inputs(pair);
        if grade(&better).score <= grade(&worse).score {
            wrong.push(pair.id.clone());
        }
    }
    (wrong, pairs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        lang: &str,
        concepts: &[&str],
        transcript: &str,
        duration_ms: Option<u64>,
    ) -> GradeInput {
        GradeInput {
            topic_title: if lang == "ko" {
                "이진 탐색".into()
            } else {
                "Binary search".into()
            },
            topic_description: String::new(),
            key_concepts: concepts.iter().map(|c| (*c).to_owned()).collect(),
            language: lang.into(),
            transcript: transcript.into(),
            duration_ms,
        }
    }

    const EN_GOOD: &str = "Binary search finds a value in a sorted array. First you look at the middle element and compare it with the target. Because the array is sorted, you can throw away half, so each step halves the search range. For example, in a list of a thousand items you need about ten comparisons, which is logarithmic time.";

    #[test]
    fn normalisation_folds_width_case_and_punctuation() {
        assert_eq!(
            normalize("Ｈｅｌｌｏ, World! It's   O(log n)."),
            "hello world its o log n"
        );
        assert_eq!(normalize("정렬된 배열이에요."), "정렬된 배열이에요");
    }

    #[test]
    fn english_stemming_is_light() {
        assert_eq!(stem_en("buckets"), stem_en("bucket"));
        assert_eq!(stem_en("sorted"), stem_en("sorting"));
        assert_eq!(stem_en("factories"), "factory");
        assert!(stems_match(&stem_en("reproduce"), &stem_en("reproduction")));
        assert!(!stems_match(&stem_en("cat"), &stem_en("category")));
    }

    #[test]
    fn korean_particles_are_stripped_but_stems_kept() {
        assert_eq!(strip_particles("배열이"), "배열");
        assert_eq!(strip_particles("데이터베이스에서"), "데이터베이스");
        assert_eq!(strip_particles("원리를"), "원리");
        assert_eq!(strip_particles("변이"), "변이");
        assert_eq!(strip_particles("판이"), "판이");
    }

    #[test]
    fn coverage_counts_concepts() {
        let concepts = [
            "sorted array",
            "middle element",
            "logarithmic time",
            "hash function",
        ];
        let a = analyse(&input("en", &concepts, EN_GOOD, None));
        assert_eq!(
            a.covered,
            vec!["sorted array", "middle element", "logarithmic time"]
        );
        assert_eq!(a.missing, vec!["hash function"]);
        let g = grade(&input("en", &concepts, EN_GOOD, None));
        assert_eq!(g.sub_scores.completeness, 75);
        assert!(g.feedback.contains("hash function"));
    }

    #[test]
    fn korean_coverage_uses_bigrams_and_particles() {
        let concepts = ["정렬된 배열", "가운데 원소", "로그 시간"];
        let t = "이진 탐색은 정렬된 배열에서 값을 찾는 방법이에요. 먼저 가운데 원소를 보고 비교해요. 매번 범위가 절반으로 줄기 때문에 로그 시간이 걸려요.";
        let a = analyse(&input("ko", &concepts, t, None));
        assert_eq!(a.covered.len(), 3, "{a:?}");
    }

    #[test]
    fn negated_concept_is_a_possible_misconception() {
        let concepts = ["sorted array", "middle element"];
        let t = "Binary search looks at the middle element of an array. The array does not need to be sorted, it works on any array at all. That is why it is so useful for every kind of list you might have.";
        let g = grade(&input("en", &concepts, t, None));
        assert_eq!(g.misconceptions.len(), 1, "{g:?}");
        assert!(g.misconceptions[0].contains("sorted array"));
        let ko = grade(&input(
            "ko",
            &["정렬된 배열", "가운데 원소"],
            "이진 탐색은 가운데 원소를 봐요. 배열이 정렬돼 있지 않아도 상관없어요. 그래서 어디에나 쓸 수 있어요.",
            None,
        ));
        assert_eq!(ko.misconceptions.len(), 1, "{ko:?}");
    }

    #[test]
    fn negation_scope_follows_generic_rules() {
        // "no" negates what follows it, not the concept before it.
        let en = analyse(&input(
            "en",
            &["lower overhead"],
            "UDP is used for games because it has lower overhead and no retransmission at the transport layer.",
            None,
        ));
        assert!(en.flags.is_empty(), "{en:?}");
        // "뿐만 아니라" is "not only", and "A가 아니라 B" denies A, not B.
        let ko = analyse(&input(
            "ko",
            &["기회비용", "기하급수적 증가"],
            "돈뿐만 아니라 시간도 기회비용이 될 수 있어요. 잔액은 직선이 아니라 기하급수적 증가를 해요.",
            None,
        ));
        assert!(ko.flags.is_empty(), "{ko:?}");
        // Korean reversal: "raise" concept, "lower" said.
        let rev = analyse(&input(
            "ko",
            &["기준금리 인상"],
            "물가가 오르면 중앙은행은 기준금리를 내려요.",
            None,
        ));
        assert_eq!(rev.flags.len(), 1, "{rev:?}");
    }

    #[test]
    fn no_key_concepts_falls_back_to_the_title() {
        let mut i = input("en", &[], EN_GOOD, None);
        i.topic_description = "Searching a sorted array by halving it.".into();
        let g = grade(&i);
        assert!(g.sub_scores.completeness >= 50, "{g:?}");
        assert!(g.feedback.contains("built-in rubric grader"));
    }

    #[test]
    fn grading_is_deterministic() {
        let i = input(
            "en",
            &["sorted array", "logarithmic time"],
            EN_GOOD,
            Some(30_000),
        );
        assert_eq!(grade(&i), grade(&i));
    }

    #[test]
    fn feedback_follows_the_lecture_language() {
        let ko = grade(&input(
            "ko",
            &["정렬된 배열", "가운데 원소"],
            "이진 탐색은 정렬된 배열에서 값을 찾는 방법이에요. 예를 들어 가운데 원소를 먼저 봐요. 그래서 빨라요.",
            None,
        ));
        assert!(
            ko.feedback.chars().filter(|c| is_hangul(*c)).count() > 30,
            "{}",
            ko.feedback
        );
        assert!(ko.feedback.ends_with("내장 루브릭 채점기가 만들었어요."));
        let en = grade(&input("en", &["sorted array"], EN_GOOD, None));
        assert!(!en.feedback.chars().any(is_hangul));
        assert!(en.feedback.contains("built-in rubric grader"));
    }

    #[test]
    fn empty_or_tiny_transcripts_score_low() {
        let empty = grade(&input("en", &["sorted array"], "", None));
        assert_eq!(empty.score, 0);
        let tiny = grade(&input(
            "ko",
            &["정렬된 배열"],
            "음 잘 모르겠어요",
            Some(3_000),
        ));
        assert!(tiny.score < 15, "{tiny:?}");
        let good = grade(&input(
            "en",
            &["sorted array", "middle element"],
            EN_GOOD,
            None,
        ));
        assert!(good.score > 60, "{good:?}");
    }

    #[test]
    fn pace_outside_the_band_costs_clarity() {
        let concepts = ["sorted array"];
        let neutral = grade(&input("en", &concepts, EN_GOOD, Some(26_000)));
        let rushed = grade(&input("en", &concepts, EN_GOOD, Some(8_000)));
        assert!(rushed.sub_scores.clarity < neutral.sub_scores.clarity);
        assert!(
            rushed
                .improvements
                .iter()
                .any(|i| i.contains("words per minute"))
        );
    }
}
