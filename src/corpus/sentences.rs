//! Sentence splitting: Unicode sentence boundaries (UAX #29, which already keeps decimals such as
//! "3.14" and quoted punctuation together), then re-joining pieces that end in a common
//! abbreviation or an initial ("Dr.", "e.g.", "J. R. R.") that UAX #29 would split after.

use unicode_segmentation::UnicodeSegmentation;

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "al",
    "fig", "no", "vol", "pp", "ca", "approx", "dept", "inc", "ltd", "co", "corp", "u.s", "u.k",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "gen",
    "col", "lt", "sgt", "rev", "hon", "mt",
];

fn ends_with_abbreviation(piece: &str) -> bool {
    let trimmed = piece.trim_end();
    let Some(body) = trimmed.strip_suffix('.') else {
        return false;
    };
    let last = body
        .rsplit(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .next()
        .unwrap_or("");
    let lower = last.to_lowercase();
    // A single capital letter is an initial ("John F. Kennedy").
    let initial = last.chars().count() == 1 && last.chars().all(|c| c.is_uppercase());
    initial || ABBREVIATIONS.contains(&lower.as_str())
}

/// Splits text into trimmed sentences.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut pending = String::new();
    for piece in text.split_sentence_bounds() {
        pending.push_str(piece);
        if ends_with_abbreviation(&pending) {
            continue;
        }
        let s = pending.trim();
        if !s.is_empty() {
            out.push(s.to_string());
        }
        pending.clear();
    }
    let s = pending.trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_plain_sentences() {
        let s = split_sentences("The cat sat. The dog ran! Did it? Yes.");
        assert_eq!(s, ["The cat sat.", "The dog ran!", "Did it?", "Yes."]);
    }

    #[test]
    fn keeps_decimals_abbreviations_and_initials() {
        let s = split_sentences(
            "Pi is about 3.14 in value. Dr. Smith met Mr. Jones, e.g. at noon. \
             John F. Kennedy spoke in 1961.",
        );
        assert_eq!(
            s,
            [
                "Pi is about 3.14 in value.",
                "Dr. Smith met Mr. Jones, e.g. at noon.",
                "John F. Kennedy spoke in 1961."
            ]
        );
    }

    #[test]
    fn keeps_quotes_with_their_sentence() {
        let s = split_sentences("He said \"Stop.\" Then he left.");
        assert_eq!(s, ["He said \"Stop.\"", "Then he left."]);
    }
}
