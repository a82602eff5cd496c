//! Words as the user directory and message search index and match them.
//!
//! Text is cut into words at every character that is not a letter or a digit, and each word is
//! folded: compatibility-decomposed (NFKD), combining marks dropped, lower-cased. So `Zoë`,
//! `ZOE` and `zoe` are one word, and `@alice.smith:example.org` is `alice smith example org`.
//!
//! The folding happens here, in Rust, and not in the database, so that PostgreSQL and SQLite
//! index and match exactly the same words: PostgreSQL's text-search parser depends on the
//! database's locale (in the C locale it drops non-ASCII letters) and SQLite's tokenizers fold
//! differently. The engines only ever see folded words separated by single spaces.

use unicode_normalization::{char::is_combining_mark, UnicodeNormalization};

/// Longer words are cut to this many characters (a pasted URL or key is one long "word";
/// PostgreSQL refuses to index words of more than 2 KiB).
pub const MAX_WORD_CHARS: usize = 64;

/// The folded words of `text`, in order, repeats kept.
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut chars = 0;
    let end = |word: &mut String, chars: &mut usize, out: &mut Vec<String>| {
        if !word.is_empty() {
            out.push(std::mem::take(word));
        }
        *chars = 0;
    };
    for c in text.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        if c.is_alphanumeric() {
            if chars < MAX_WORD_CHARS {
                word.extend(c.to_lowercase());
                chars += 1;
            }
        } else {
            end(&mut word, &mut chars, &mut out);
        }
    }
    end(&mut word, &mut chars, &mut out);
    out
}

/// The words of `text` as written (cut where [`words`] cuts, combining marks kept with their
/// letter), each with its folded forms: search highlights name the words as the text has them.
pub fn words_as_written(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() || (!word.is_empty() && is_combining_mark(c)) {
            word.push(c);
        } else if !word.is_empty() {
            let folded = words(&word);
            out.push((std::mem::take(&mut word), folded));
        }
    }
    if !word.is_empty() {
        let folded = words(&word);
        out.push((word, folded));
    }
    out
}

/// The distinct folded words of `text`, sorted.
pub fn distinct_words(text: &str) -> Vec<String> {
    let mut words = words(text);
    words.sort();
    words.dedup();
    words
}

/// The first string after every string that starts with `prefix`: `[prefix, upper)` is the
/// range of words `prefix` is a prefix of, in code point order (which is byte order in UTF-8,
/// and so the order of PostgreSQL's "C" collation and of SQLite's BINARY).
pub fn prefix_upper_bound(prefix: &str) -> String {
    let mut upper = prefix.to_owned();
    upper.push(char::MAX);
    upper
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_accents_and_compatibility_forms() {
        assert_eq!(words("Zoë ZOE zoe"), ["zoe", "zoe", "zoe"]);
        assert_eq!(words("Ångström ﬁle"), ["angstrom", "file"]);
        assert_eq!(words("ÉCOLE"), ["ecole"]);
    }

    #[test]
    fn splits_at_everything_but_letters_and_digits() {
        assert_eq!(
            words("@alice.smith:example.org"),
            ["alice", "smith", "example", "org"]
        );
        assert_eq!(
            words("don't  stop_me-now!"),
            ["don", "t", "stop", "me", "now"]
        );
        assert_eq!(words("r2d2 and 3po"), ["r2d2", "and", "3po"]);
        assert_eq!(words("  "), Vec::<String>::new());
        assert_eq!(words("你好 世界"), ["你好", "世界"]);
    }

    #[test]
    fn words_as_written_keep_their_spelling() {
        assert_eq!(
            words_as_written("Zoe\u{0308}, hi!"),
            [
                ("Zoe\u{0308}".to_owned(), vec!["zoe".to_owned()]),
                ("hi".to_owned(), vec!["hi".to_owned()])
            ]
        );
    }

    #[test]
    fn cuts_long_words() {
        let long = "a".repeat(500);
        assert_eq!(words(&long), ["a".repeat(MAX_WORD_CHARS)]);
        assert_eq!(words(&format!("{long} b")).len(), 2);
    }

    #[test]
    fn prefix_range_holds_every_extension() {
        let upper = prefix_upper_bound("al");
        for w in ["al", "alice", "al\u{10fffe}", "alz", "al你"] {
            assert!(w >= "al" && w < upper.as_str(), "{w}");
        }
        for w in ["ak", "am", "a"] {
            assert!(!(w >= "al" && w < upper.as_str()), "{w}");
        }
    }
}
