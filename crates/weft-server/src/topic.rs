//! Topic names and NATS-style patterns (`*` one segment, `>` the rest).
//!
//! The rules are those of `docs/PROTOCOL.md`: 1–200 bytes, segments separated by `.`, each
//! segment one or more of `A–Z a–z 0–9 _ - : @ =`.

use std::fmt;

/// Longest topic name or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 200;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicError(String);

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TopicError {}

fn segment_ok(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'@' | b'='))
}

fn check_len(s: &str) -> Result<(), TopicError> {
    if s.is_empty() || s.len() > MAX_TOPIC_LEN {
        return Err(TopicError(format!("topic must be 1 to {MAX_TOPIC_LEN} bytes")));
    }
    Ok(())
}

/// Check a concrete topic name (no wildcards).
///
/// ```
/// use weft_server::topic::validate_topic;
/// assert!(validate_topic("chat.lobby").is_ok());
/// assert!(validate_topic("chat.*").is_err());
/// assert!(validate_topic("chat..lobby").is_err());
/// ```
pub fn validate_topic(s: &str) -> Result<(), TopicError> {
    check_len(s)?;
    for seg in s.split('.') {
        if !segment_ok(seg) {
            return Err(TopicError(format!("invalid topic {:?}: bad segment {:?}", s, seg)));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Seg {
    Lit(Box<str>),
    Star,
    Tail,
}

/// A subscription or permission pattern: a topic whose segments may be `*` (exactly one
/// segment) or, last, `>` (one or more segments).
///
/// ```
/// use weft_server::topic::Pattern;
/// let p = Pattern::parse("prices.>").unwrap();
/// assert!(p.matches("prices.fx.EUR"));
/// assert!(!p.matches("prices"));
/// assert!(Pattern::parse("chat.*").unwrap().matches("chat.lobby"));
/// assert!(Pattern::parse(">").unwrap().covers(&Pattern::parse("chat.*").unwrap()));
/// ```
#[derive(Debug, Clone)]
pub struct Pattern {
    text: Box<str>,
    segs: Box<[Seg]>,
}

// A pattern is its text (the segments are parsed from it): equal and hashed as the text, so a
// set of patterns is looked up by a `&str`.
impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Pattern {}

impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl std::borrow::Borrow<str> for Pattern {
    fn borrow(&self) -> &str {
        &self.text
    }
}

impl Pattern {
    /// Parse a pattern; a plain topic name is a pattern that matches only itself.
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        check_len(s)?;
        let parts: Vec<&str> = s.split('.').collect();
        let mut segs = Vec::with_capacity(parts.len());
        for (i, seg) in parts.iter().enumerate() {
            segs.push(match *seg {
                "*" => Seg::Star,
                ">" if i == parts.len() - 1 => Seg::Tail,
                ">" => return Err(TopicError(format!("invalid pattern {s:?}: '>' must be the last segment"))),
                lit if segment_ok(lit) => Seg::Lit(lit.into()),
                bad => return Err(TopicError(format!("invalid pattern {s:?}: bad segment {bad:?}"))),
            });
        }
        Ok(Self { text: s.into(), segs: segs.into() })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this pattern has a wildcard (otherwise it is a concrete topic).
    pub fn is_wildcard(&self) -> bool {
        self.segs.iter().any(|s| !matches!(s, Seg::Lit(_)))
    }

    /// Whether the concrete topic `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for seg in self.segs.iter() {
            match seg {
                Seg::Tail => return parts.next().is_some(),
                Seg::Star => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Seg::Lit(l) => {
                    if parts.next() != Some(&**l) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Whether every topic that `other` can match is matched by `self` (used for permissions).
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut theirs = other.segs.iter();
        for mine in self.segs.iter() {
            let Some(t) = theirs.next() else { return false };
            match (mine, t) {
                (Seg::Tail, _) => return true,
                (Seg::Star, Seg::Lit(_) | Seg::Star) => {}
                (Seg::Lit(a), Seg::Lit(b)) if a == b => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether any of `allowed` covers `requested`.
pub fn allowed_by(allowed: &[Pattern], requested: &Pattern) -> bool {
    allowed.iter().any(|a| a.covers(requested))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn names() {
        for ok in ["a", "chat.lobby", "user:42.events", "prices.EUR-USD", "a=b.c@d_e"] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(MAX_TOPIC_LEN + 1);
        for bad in ["", ".", "a.", ".a", "a..b", "a b", "chat.*", "chat.>", "é", long.as_str()] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
        assert!(validate_topic(&"a".repeat(MAX_TOPIC_LEN)).is_ok());
    }

    #[test]
    fn patterns_parse() {
        assert!(Pattern::parse("a.>.b").is_err());
        assert!(Pattern::parse("a.**").is_err());
        assert!(Pattern::parse("a.").is_err());
        assert!(!p("a.b").is_wildcard());
        assert!(p("a.*").is_wildcard());
        assert!(p(">").is_wildcard());
    }

    #[test]
    fn matching() {
        assert!(p("chat.*").matches("chat.lobby"));
        assert!(!p("chat.*").matches("chat"));
        assert!(!p("chat.*").matches("chat.a.b"));
        assert!(p("chat.>").matches("chat.a.b"));
        assert!(!p("chat.>").matches("chat"));
        assert!(p(">").matches("anything.at.all"));
        assert!(p("*.x").matches("a.x"));
        assert!(!p("*.x").matches("a.y"));
        assert!(p("a.b").matches("a.b"));
        assert!(!p("a.b").matches("a.bc"));
        assert!(!p("a.b").matches("a.b.c"));
    }

    #[test]
    fn covering() {
        assert!(p(">").covers(&p("a")));
        assert!(p(">").covers(&p("a.>")));
        assert!(p("chat.>").covers(&p("chat.*")));
        assert!(p("chat.>").covers(&p("chat.a.b")));
        assert!(!p("chat.>").covers(&p("chat")));
        assert!(!p("chat.*").covers(&p("chat.>")));
        assert!(p("chat.*").covers(&p("chat.x")));
        assert!(p("chat.*").covers(&p("chat.*")));
        assert!(!p("chat.x").covers(&p("chat.*")));
        assert!(!p("chat.*").covers(&p("chat.x.y")));
        assert!(!p("a.b").covers(&p("a")));
        assert!(allowed_by(&[p("x"), p("chat.>")], &p("chat.room1")));
        assert!(!allowed_by(&[], &p("chat.room1")));
    }

    #[test]
    fn a_set_of_patterns_is_found_by_text() {
        let mut set = std::collections::HashSet::new();
        set.insert(p("chat.*"));
        set.insert(p("news"));
        assert!(set.contains("chat.*") && set.contains("news"));
        assert!(!set.contains("chat.x") && !set.contains("chat"));
        assert_eq!(set.take("news").map(|t| t.as_str().to_owned()).as_deref(), Some("news"));
        assert!(!set.insert(p("chat.*")), "the same text is the same pattern");
    }
}
