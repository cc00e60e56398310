//! Resource keys and whether two of them overlap.
//!
//! A task declares the resources it touches as strings: literals (`customer:456`,
//! `file:Cargo.toml`) or globs (`file:src/storage/**`). In a glob, `*` matches any run of
//! characters within one `/`-separated segment, `**` matches anything (across segments, also
//! nothing), `?` matches one character other than `/`. Two keys overlap when some string matches
//! both; two tasks whose keys overlap never run at the same time.
//!
//! The check builds the product of the two patterns' automata and looks for a path to a pair of
//! accepting states: exact for glob against glob, not a heuristic.

use std::collections::HashSet;

/// One element of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Token {
    /// This exact character.
    Char(char),
    /// Any one character but `/`.
    One,
    /// Any run of characters without `/`.
    Segment,
    /// Any run of characters.
    Any,
    /// `**/`: nothing, or any run of characters that ends with `/`.
    Dirs,
}

fn compile(pattern: &str) -> Vec<Token> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::with_capacity(chars.len());
    let mut idx = 0;
    while idx < chars.len() {
        match chars[idx] {
            '*' if chars.get(idx + 1) == Some(&'*') => {
                // `a/**/b` matches `a/b` too: `**/` may match nothing.
                if chars.get(idx + 2) == Some(&'/') {
                    tokens.push(Token::Dirs);
                    idx += 3;
                } else {
                    tokens.push(Token::Any);
                    idx += 2;
                }
            }
            '*' => {
                tokens.push(Token::Segment);
                idx += 1;
            }
            '?' => {
                tokens.push(Token::One);
                idx += 1;
            }
            c => {
                tokens.push(Token::Char(c));
                idx += 1;
            }
        }
    }
    tokens
}

/// Whether a key has glob characters.
pub fn is_glob(key: &str) -> bool {
    key.contains(['*', '?'])
}

/// What one step of a token can consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Exactly(char),
    NotSlash,
    Anything,
}

/// A place in a pattern: before token `pos`, or (`inside`) part way through a `**/`, which can
/// then only be left by consuming a `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    pos: usize,
    inside: bool,
}

impl State {
    fn at(pos: usize) -> State {
        State { pos, inside: false }
    }
}

impl Token {
    /// The ways the token consumes one character from `state`: what it accepts, and where it
    /// may go next.
    fn moves(self, state: State) -> Vec<(Class, Vec<State>)> {
        let pos = state.pos;
        match self {
            Token::Char(c) => vec![(Class::Exactly(c), vec![State::at(pos + 1)])],
            Token::One => vec![(Class::NotSlash, vec![State::at(pos + 1)])],
            Token::Segment => vec![(Class::NotSlash, vec![State::at(pos), State::at(pos + 1)])],
            Token::Any => vec![(Class::Anything, vec![State::at(pos), State::at(pos + 1)])],
            Token::Dirs => vec![
                (Class::Anything, vec![State { pos, inside: true }]),
                (Class::Exactly('/'), vec![State::at(pos + 1)]),
            ],
        }
    }

    /// Whether the token may match nothing.
    fn may_be_empty(self) -> bool {
        matches!(self, Token::Segment | Token::Any | Token::Dirs)
    }
}

/// Whether some character is accepted by both classes.
fn meet(a: Class, b: Class) -> bool {
    match (a, b) {
        (Class::Exactly(x), Class::Exactly(y)) => x == y,
        (Class::Exactly(x), Class::NotSlash) | (Class::NotSlash, Class::Exactly(x)) => x != '/',
        _ => true,
    }
}

/// The states reachable from `state` without consuming anything.
fn closure(tokens: &[Token], state: State) -> Vec<State> {
    let mut reachable = vec![state];
    if state.inside {
        return reachable;
    }
    let mut at = state.pos;
    while at < tokens.len() && tokens[at].may_be_empty() {
        at += 1;
        reachable.push(State::at(at));
    }
    reachable
}

/// Whether some string matches both keys.
pub fn overlaps(a: &str, b: &str) -> bool {
    if !is_glob(a) && !is_glob(b) {
        return a == b;
    }
    let (a, b) = (compile(a), compile(b));
    let mut seen: HashSet<(State, State)> = HashSet::new();
    let mut frontier: Vec<(State, State)> = Vec::new();
    for i in closure(&a, State::at(0)) {
        for j in closure(&b, State::at(0)) {
            if seen.insert((i, j)) {
                frontier.push((i, j));
            }
        }
    }
    while let Some((i, j)) = frontier.pop() {
        let (done_a, done_b) = (i.pos == a.len(), j.pos == b.len());
        if done_a && done_b {
            return true;
        }
        if done_a || done_b {
            continue;
        }
        // Consume one character that both sides accept.
        for (class_a, next_a) in a[i.pos].moves(i) {
            for (class_b, next_b) in b[j.pos].moves(j) {
                if !meet(class_a, class_b) {
                    continue;
                }
                for &na in &next_a {
                    for &nb in &next_b {
                        for ca in closure(&a, na) {
                            for cb in closure(&b, nb) {
                                if seen.insert((ca, cb)) {
                                    frontier.push((ca, cb));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    false
}

/// Whether a literal key matches a pattern (a glob, or a literal compared for equality).
pub fn matches(pattern: &str, key: &str) -> bool {
    debug_assert!(!is_glob(key), "matches takes a literal key");
    overlaps(pattern, key)
}

/// The first pair of overlapping keys between two sets, if any.
pub fn conflict<'a>(held: &'a [String], wanted: &'a [String]) -> Option<(&'a str, &'a str)> {
    held.iter().find_map(|h| wanted.iter().find(|w| overlaps(h, w)).map(|w| (h.as_str(), w.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn literals_overlap_only_when_equal() {
        assert!(overlaps("customer:456", "customer:456"));
        assert!(!overlaps("customer:456", "customer:457"));
    }

    #[test]
    fn globs_against_literals() {
        assert!(matches("file:src/storage/**", "file:src/storage/wal.rs"));
        assert!(matches("file:src/storage/**", "file:src/storage/a/b/c.rs"));
        assert!(matches("file:src/**/mod.rs", "file:src/mod.rs"), "`**/` may match nothing");
        assert!(matches("file:src/**/mod.rs", "file:src/a/b/mod.rs"));
        assert!(!matches("file:src/**/mod.rs", "file:src/amod.rs"), "`**/` ends at a `/`");
        assert!(!matches("file:src/storage/**", "file:src/store.rs"));
        assert!(matches("file:src/*.rs", "file:src/lib.rs"));
        assert!(!matches("file:src/*.rs", "file:src/a/lib.rs"), "`*` stays within a segment");
        assert!(matches("customer:45?", "customer:456"));
        assert!(!matches("customer:45?", "customer:4567"));
    }

    #[test]
    fn globs_against_globs() {
        assert!(overlaps("file:src/**", "file:src/storage/*.rs"));
        assert!(overlaps("file:*.toml", "file:Cargo.*"));
        assert!(!overlaps("file:src/*.rs", "file:tests/*.rs"));
        assert!(!overlaps("file:a/*", "file:a/b/*"), "one segment against two");
        assert!(overlaps("file:a/**", "file:a/b/*"));
        assert!(!overlaps("customer:1*", "customer:2*"));
    }

    fn key() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("/"), Just("*"), Just("**"), Just("?")], 0..7)
            .prop_map(|parts| parts.concat())
    }

    fn literal() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![Just('a'), Just('b'), Just('/')], 0..7)
            .prop_map(|chars| chars.into_iter().collect())
    }

    /// A reference matcher, by recursion over the pattern.
    fn reference(pattern: &[Token], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((Token::Char(c), rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
            Some((Token::One, rest)) => text.first().is_some_and(|c| *c != '/') && reference(rest, &text[1..]),
            Some((Token::Segment, rest)) => {
                (0..=text.len()).take_while(|n| !text[..*n].contains(&'/')).any(|n| reference(rest, &text[n..]))
            }
            Some((Token::Any, rest)) => (0..=text.len()).any(|n| reference(rest, &text[n..])),
            Some((Token::Dirs, rest)) => {
                reference(rest, text) || (1..=text.len()).any(|n| text[n - 1] == '/' && reference(rest, &text[n..]))
            }
        }
    }

    proptest! {
        #[test]
        fn glob_against_literal_agrees_with_a_reference_matcher(pattern in key(), text in literal()) {
            let chars: Vec<char> = text.chars().collect();
            prop_assert_eq!(overlaps(&pattern, &text), reference(&compile(&pattern), &chars));
        }

        #[test]
        fn overlap_is_symmetric_and_reflexive(a in key(), b in key()) {
            prop_assert_eq!(overlaps(&a, &b), overlaps(&b, &a));
            prop_assert!(overlaps(&a, &a));
        }

        #[test]
        fn a_literal_matching_both_globs_means_they_overlap(a in key(), b in key(), text in literal()) {
            if overlaps(&a, &text) && overlaps(&b, &text) {
                prop_assert!(overlaps(&a, &b));
            }
        }
    }
}
