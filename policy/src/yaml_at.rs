//! Where a node of a YAML document is, for errors found after it was read (a duplicate name, a
//! rule whose parts contradict each other). serde_yaml_ng marks an error with the position of
//! the node being read when it arose, so a reader that walks to the node and fails there learns
//! its line and column; the message then reads as the parser's own do.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a path into a document: a mapping's key or a sequence's index.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A path into a document, written as the parser writes its own (`rules[2].action`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodePath(pub Vec<Step>);

impl NodePath {
    pub fn key(mut self, k: impl Into<String>) -> NodePath {
        self.0.push(Step::Key(k.into()));
        self
    }

    pub fn index(mut self, i: usize) -> NodePath {
        self.0.push(Step::Index(i));
        self
    }

    /// `path: reason at line L column C`, or without the position if the path is not in the
    /// text.
    pub fn error(&self, text: &str, reason: impl fmt::Display) -> String {
        let at = locate(text, &self.0)
            .map(|(line, column)| format!(" at line {line} column {column}"))
            .unwrap_or_default();
        if self.0.is_empty() {
            format!("{reason}{at}")
        } else {
            format!("{self}: {reason}{at}")
        }
    }
}

impl fmt::Display for NodePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Step::Key(k) if i == 0 => write!(f, "{k}")?,
                Step::Key(k) => write!(f, ".{k}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// The line and column (from 1) where the node at `path` starts.
pub fn locate(text: &str, path: &[Step]) -> Option<(usize, usize)> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let err = Walk(path).deserialize(de).err()?;
    if !err.to_string().starts_with(HERE) && !err.to_string().contains(&format!(": {HERE}")) {
        return None;
    }
    err.location().map(|l| (l.line(), l.column()))
}

const HERE: &str = "(the node looked for)";

struct Walk<'p>(&'p [Step]);

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Walk<'_> {
    /// Reached: fail here, so the parser marks this node's position.
    fn here<E: de::Error>(&self) -> Result<(), E> {
        if self.0.is_empty() {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.here()?;
        let Some((Step::Key(want), rest)) = self.0.split_first() else {
            return Ok(());
        };
        while let Some(k) = map.next_key::<serde_yaml_ng::Value>()? {
            if k.as_str() == Some(want.as_str()) {
                return map.next_value_seed(Walk(rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.here()?;
        let Some((Step::Index(want), rest)) = self.0.split_first() else {
            return Ok(());
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Walk(rest)).map(|_| ())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.here()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.here()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.here()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.here()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.here()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.here()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.here()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n      - key: c\n        value: x\n  - key: z\n";

    #[test]
    fn nodes_are_found_where_they_start() {
        let p = |steps: NodePath| locate(DOC, &steps.0);
        let root = NodePath::default();
        assert_eq!(p(root.clone().key("domain")), Some((1, 9)));
        assert_eq!(p(root.clone().key("descriptors").index(0)), Some((3, 5)));
        assert_eq!(p(root.clone().key("descriptors").index(1)), Some((8, 5)));
        let c = root
            .clone()
            .key("descriptors")
            .index(0)
            .key("descriptors")
            .index(1);
        assert_eq!(p(c.clone()), Some((6, 9)));
        assert_eq!(c.to_string(), "descriptors[0].descriptors[1]");
        assert_eq!(
            c.error(DOC, "bad"),
            "descriptors[0].descriptors[1]: bad at line 6 column 9"
        );
        // Paths that are not in the document have no position.
        assert_eq!(p(root.clone().key("descriptors").index(5)), None);
        assert_eq!(p(root.clone().key("nothing")), None);
        assert_eq!(p(root.key("domain").index(0)), None);
        assert_eq!(
            locate("[a, b", &[Step::Index(3)]),
            None,
            "a YAML error is no position"
        );
    }
}
