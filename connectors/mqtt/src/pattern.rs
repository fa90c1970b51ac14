//! Topic patterns: literal levels, `{name}` capturing one level, `{name+}` capturing the rest of
//! the topic (one level or more: Zigbee2MQTT friendly names may hold `/`), and `+` matching one
//! level without capturing. A pattern is also the subscription filter it needs.

/// One level of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Any,
    Capture(String),
    Rest(String),
}

/// A topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    levels: Vec<Level>,
}

/// Why a pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic pattern {pattern:?}: {why}")]
pub struct PatternError {
    /// The pattern.
    pub pattern: String,
    /// What is wrong.
    pub why: &'static str,
}

impl Pattern {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let fail = |why| {
            Err(PatternError {
                pattern: text.into(),
                why,
            })
        };
        if text.is_empty() {
            return fail("empty");
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = if *part == "+" {
                Level::Any
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                match name.strip_suffix('+') {
                    Some(rest)
                        if i + 1 == parts.len()
                            || parts[i + 1..].iter().all(|p| !p.contains('{') && *p != "+") =>
                    {
                        Level::Rest(rest.into())
                    }
                    Some(_) => {
                        return fail("a {name+} level may be followed by literal levels only");
                    }
                    None if name.is_empty() => return fail("a capture needs a name"),
                    None => Level::Capture(name.into()),
                }
            } else if part.contains(['{', '}', '+', '#']) {
                return fail("a level is a literal, +, {name} or {name+}");
            } else {
                Level::Literal((*part).into())
            };
            levels.push(level);
        }
        if levels
            .iter()
            .filter(|l| matches!(l, Level::Rest(_)))
            .count()
            > 1
        {
            return fail("one {name+} level at most");
        }
        Ok(Pattern {
            text: text.into(),
            levels,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its captures' names, each as its own template (for checking what a template names).
    pub fn names(&self) -> Vec<(String, String)> {
        self.levels
            .iter()
            .filter_map(|l| match l {
                Level::Capture(n) | Level::Rest(n) => Some((n.clone(), n.clone())),
                _ => None,
            })
            .collect()
    }

    /// The MQTT subscription filter that receives every topic the pattern matches.
    pub fn filter(&self) -> String {
        let mut out = Vec::new();
        for level in &self.levels {
            match level {
                Level::Literal(l) => out.push(l.as_str()),
                Level::Any | Level::Capture(_) => out.push("+"),
                Level::Rest(_) => {
                    out.push("#");
                    break;
                }
            }
        }
        out.join("/")
    }

    /// The captures if `topic` matches, by name.
    pub fn matches(&self, topic: &str) -> Option<Vec<(String, String)>> {
        let parts: Vec<&str> = topic.split('/').collect();
        let mut captures = Vec::new();
        let rest_at = self.levels.iter().position(|l| matches!(l, Level::Rest(_)));
        let (head, tail) = match rest_at {
            Some(i) => (&self.levels[..i], &self.levels[i + 1..]),
            None => (&self.levels[..], &[][..]),
        };
        if rest_at.is_none() && parts.len() != head.len() {
            return None;
        }
        // The rest takes at least one level, between the head and the literal tail.
        if rest_at.is_some() && parts.len() < head.len() + 1 + tail.len() {
            return None;
        }
        let one = |level: &Level, part: &str, captures: &mut Vec<(String, String)>| match level {
            Level::Literal(l) => l == part,
            Level::Any => !part.is_empty(),
            Level::Capture(name) => {
                captures.push((name.clone(), part.into()));
                !part.is_empty()
            }
            Level::Rest(_) => false,
        };
        for (level, part) in head.iter().zip(&parts) {
            if !one(level, part, &mut captures) {
                return None;
            }
        }
        if let Some(Level::Rest(name)) = rest_at.map(|i| &self.levels[i]) {
            let end = parts.len() - tail.len();
            for (level, part) in tail.iter().zip(&parts[end..]) {
                if !one(level, part, &mut captures) {
                    return None;
                }
            }
            let rest = parts[head.len()..end].join("/");
            if rest.split('/').any(str::is_empty) {
                return None;
            }
            captures.push((name.clone(), rest));
        }
        Some(captures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(pattern: &str, topic: &str) -> Option<Vec<(String, String)>> {
        Pattern::parse(pattern).ok().and_then(|p| p.matches(topic))
    }

    #[test]
    fn levels_capture_and_filters_subscribe() {
        let z =
            Pattern::parse("zigbee2mqtt/{device+}/availability").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(z.filter(), "zigbee2mqtt/#");
        assert_eq!(
            z.matches("zigbee2mqtt/kitchen/floor_light/availability"),
            Some(vec![("device".into(), "kitchen/floor_light".into())])
        );
        assert_eq!(z.matches("zigbee2mqtt/availability"), None);
        assert_eq!(
            captured("tele/{device}/STATE", "tele/plug-1/STATE"),
            Some(vec![("device".into(), "plug-1".into())])
        );
        assert_eq!(captured("tele/{device}/STATE", "tele/a/b/STATE"), None);
        assert_eq!(
            captured("site/{tenant}/+/{device}", "site/acme/floor2/d9"),
            Some(vec![
                ("tenant".into(), "acme".into()),
                ("device".into(), "d9".into())
            ])
        );
        assert_eq!(
            Pattern::parse("site/{tenant}/+/{device}").map(|p| p.filter()),
            Ok("site/+/+/+".into())
        );
        assert_eq!(captured("zigbee2mqtt/{device+}", "zigbee2mqtt/a//b"), None);
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["", "a/#", "a/{}", "a/{x+}/{y}", "a/b{c}", "{a+}/{b+}"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
