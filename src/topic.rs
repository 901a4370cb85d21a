//! MQTT topic names and filters: our own syntax checks and matcher, run on every topic and
//! filter a client sends before the ACL, the chat registry or the engine sees it.
//!
//! Why our own: rumqttd 0.20's `matches` starts with `topic[..1]`, which panics when the
//! first character is more than one byte ('日本/x', 'é/x'), and its router calls it for every
//! general-plane publish and subscription. Everything here works on `&str` without slicing
//! by byte index, so no topic string can panic it. [`engine_safe`] says which topics may be
//! handed to the engine at all.

/// Longest topic or filter MQTT can encode (a two-byte length prefix).
pub const MAX_LEN: usize = 65_535;

/// Why a topic name or filter was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    /// U+0000 is not allowed in MQTT strings.
    Nul,
    /// `+` or `#` in a topic name.
    WildcardInName,
    /// `#` not alone as the last level, or `+` not alone in its level.
    BadWildcard,
    /// `$share/{group}/{filter}` without a valid group or filter.
    BadShare,
}

impl TopicError {
    pub fn as_str(self) -> &'static str {
        match self {
            TopicError::Empty => "empty topic",
            TopicError::TooLong => "topic longer than 65535 bytes",
            TopicError::Nul => "topic contains U+0000",
            TopicError::WildcardInName => "wildcards are not allowed in a topic name",
            TopicError::BadWildcard => {
                "'#' must be the whole last level and '+' a whole level of a filter"
            }
            TopicError::BadShare => "a shared subscription is $share/{group}/{filter}",
        }
    }
}

fn common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// A topic name a client may publish to (MQTT 4.7: no wildcards).
pub fn valid_name(topic: &str) -> Result<(), TopicError> {
    common(topic)?;
    if topic.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// A subscription filter (MQTT 4.7.1), shared subscriptions included.
pub fn valid_filter(filter: &str) -> Result<(), TopicError> {
    common(filter)?;
    if let Some(shared) = filter.strip_prefix("$share/") {
        let (group, inner) = shared.split_once('/').ok_or(TopicError::BadShare)?;
        if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
            return Err(TopicError::BadShare);
        }
        return wildcards_ok(inner);
    }
    wildcards_ok(filter)
}

fn wildcards_ok(filter: &str) -> Result<(), TopicError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if last => {}
            "+" => {}
            l if l.contains(['+', '#']) => return Err(TopicError::BadWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// Whether the engine (rumqttd) can take this topic or filter without panicking: its matcher
/// slices the first byte, so the first character must be ASCII. Chat topics never reach it.
pub fn engine_safe(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii)
}

/// Whether `topic` matches `filter` (MQTT 4.7). `topic` may itself be a filter: a wildcard
/// level in it is then covered only by the same wildcard or `#` in `filter`, which is what
/// the ACL needs to decide whether a requested filter stays inside a rule's pattern.
///
/// Topics starting with `$` are not matched by a filter whose first level is a wildcard.
pub fn matches(topic: &str, filter: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topics = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topics.next() {
            // A requested '#' is wider than anything but a '#' in the pattern.
            Some("#") => return false,
            Some(_) if f == "+" => {}
            Some(t) if t == f => {}
            _ => return false,
        }
    }
    topics.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(valid_name("a/b"), Ok(()));
        assert_eq!(valid_name("日本/x"), Ok(()));
        assert_eq!(valid_name("/"), Ok(()));
        assert_eq!(valid_name(""), Err(TopicError::Empty));
        assert_eq!(valid_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(valid_name("a#"), Err(TopicError::WildcardInName));
        assert_eq!(valid_name("a\0b"), Err(TopicError::Nul));
        assert_eq!(
            valid_name(&"x".repeat(MAX_LEN + 1)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "€/#",
            "$share/g/a/+",
            "a//b",
            "/#",
        ] {
            assert_eq!(valid_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a+/b", "#/a", "a/b+", ""] {
            assert!(valid_filter(bad).is_err(), "{bad}");
        }
        assert_eq!(valid_filter("$share/g"), Err(TopicError::BadShare));
        assert_eq!(valid_filter("$share//a"), Err(TopicError::BadShare));
        assert_eq!(valid_filter("$share/+/a"), Err(TopicError::BadShare));
        assert_eq!(valid_filter("$share/g/a/#/b"), Err(TopicError::BadWildcard));
    }

    #[test]
    fn matching() {
        assert!(matches("a/b", "a/b"));
        assert!(matches("a/b", "a/+"));
        assert!(matches("a/b", "#"));
        assert!(matches("a/b/c", "a/#"));
        assert!(matches("a", "a/#"));
        assert!(!matches("a/b", "a"));
        assert!(!matches("a", "a/b"));
        assert!(!matches("a/b/c", "a/+"));
        assert!(!matches("$SYS/x", "#"));
        assert!(!matches("$SYS/x", "+/x"));
        assert!(matches("$SYS/x", "$SYS/#"));
        // Filter against pattern (the ACL's use).
        assert!(matches("a/+", "a/+"));
        assert!(matches("a/#", "a/#"));
        assert!(!matches("a/#", "a/+"));
        assert!(!matches("#", "a/#"));
        assert!(!matches("a/+", "a/b"));
    }

    #[test]
    fn multibyte_first_characters_are_fine_here_and_not_for_the_engine() {
        for t in ["日本/x", "ü", "€/chat", "é/x", "日本/#"] {
            assert!(!matches(t, "a/#"));
            assert!(matches(t, "#") || t.starts_with('$'));
            assert!(!engine_safe(t));
        }
        assert!(engine_safe("a/日本"));
        assert!(!engine_safe(""));
    }

    #[test]
    fn never_panics_on_any_short_string() {
        let alphabet = ["a", "/", "+", "#", "$", "é", "日", "\0", ""];
        for x in alphabet {
            for y in alphabet {
                for z in alphabet {
                    let s = format!("{x}{y}{z}");
                    let _ = valid_name(&s);
                    let _ = valid_filter(&s);
                    let _ = engine_safe(&s);
                    for f in ["#", "+/#", "a/+", &s] {
                        let _ = matches(&s, f);
                    }
                }
            }
        }
    }
}
