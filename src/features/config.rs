//! `[features]`: which features an impression yields and how numbers are transformed.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// Largest accepted `bits`: 2^30 coordinates is already a multi-gigabyte model.
pub const MAX_BITS: u8 = 30;

/// The feature set and hashing space, `[features]` in the pipeline config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    /// Size of the hashed feature space: indices are in `0..2^bits`. Allowed: 1..=30.
    #[serde(default = "default_bits")]
    pub bits: u8,
    /// Transform of numeric `ctx` values whose field has no entry in `numeric`.
    #[serde(default = "default_numeric_default")]
    pub numeric_default: NumericTransform,
    /// Per-field transforms of numeric `ctx` values, by field name.
    #[serde(default = "default_numeric")]
    pub numeric: BTreeMap<String, NumericTransform>,
    /// Feature crosses `[a, b]`: `a` and `b` are `user`, `item` or a `ctx` field name. A
    /// cross is present in an event only when both sides are present and categorical there.
    #[serde(default = "default_crosses")]
    pub crosses: Vec<[String; 2]>,
    /// Incremental per-user, per-item and per-user×category features (`[features.entity]`).
    #[serde(default)]
    pub entity: crate::entity::EntityConfig,
}

const fn default_bits() -> u8 {
    22
}

const fn default_numeric_default() -> NumericTransform {
    NumericTransform::Log1p
}

fn default_numeric() -> BTreeMap<String, NumericTransform> {
    BTreeMap::from([
        ("position".to_owned(), NumericTransform::Categorical),
        ("hour".to_owned(), NumericTransform::Categorical),
    ])
}

fn default_crosses() -> Vec<[String; 2]> {
    [
        ["user", "category"],
        ["item", "device"],
        ["position", "device"],
    ]
    .into_iter()
    .map(|pair| pair.map(str::to_owned))
    .collect()
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            bits: default_bits(),
            numeric_default: default_numeric_default(),
            numeric: default_numeric(),
            crosses: default_crosses(),
            entity: crate::entity::EntityConfig::default(),
        }
    }
}

impl FeatureConfig {
    /// Every problem with this config, each naming the key, the value and what is allowed.
    /// Empty when the config is usable.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = self.entity.validate();
        if !(1..=MAX_BITS).contains(&self.bits) {
            problems.push(format!(
                "features.bits must be in 1..={MAX_BITS}, got {}",
                self.bits
            ));
        }
        self.numeric_default
            .check("features.numeric_default", &mut problems);
        for (name, transform) in &self.numeric {
            let key = format!("features.numeric.{name}");
            check_field_name(&key, name, &mut problems);
            if name == "user" || name == "item" {
                problems.push(format!(
                    "{key}: `{name}` is an id, always categorical; numeric transforms apply to ctx fields only"
                ));
            }
            transform.check(&key, &mut problems);
        }
        for (i, [a, b]) in self.crosses.iter().enumerate() {
            let key = format!("features.crosses[{i}]");
            check_field_name(&key, a, &mut problems);
            check_field_name(&key, b, &mut problems);
            if a == b {
                problems.push(format!(
                    "{key} = [{a:?}, {b:?}] names the same field twice; a cross needs two different fields"
                ));
            }
            if let Some(j) = self.crosses[..i]
                .iter()
                .position(|c| c == &[a.clone(), b.clone()])
            {
                problems.push(format!(
                    "{key} = [{a:?}, {b:?}] repeats features.crosses[{j}]; each cross must be listed once"
                ));
            }
        }
        problems
    }
}

fn check_field_name(key: &str, name: &str, problems: &mut Vec<String>) {
    if name.is_empty() {
        problems.push(format!("{key}: a field name must not be empty"));
    } else if name.starts_with('_') {
        problems.push(format!(
            "{key}: field {name:?} starts with `_`, which marks reserved fields that are never featurized"
        ));
    }
}

/// How a numeric `ctx` value becomes a feature.
///
/// In TOML: `"raw"`, `"log1p"`, `"categorical"` or `{ buckets = [b0, b1, ...] }`.
#[derive(Debug, Clone, PartialEq)]
pub enum NumericTransform {
    /// The value as is (clamped to the `f32` range), at the field's own index.
    Raw,
    /// `sign(x) * ln(1 + |x|)`, at the field's own index.
    Log1p,
    /// The number becomes a category: its integer part (rounded toward zero, so `2.9` is
    /// category `2` and `-0.5` is category `0`; saturating at the `i64` range).
    Categorical,
    /// The number becomes the category `k` = the number of boundaries `<= x`, so there are
    /// `len + 1` buckets. Boundaries must be finite and strictly increasing.
    Buckets(Vec<f64>),
}

impl NumericTransform {
    /// Whether the transform turns numbers into categories (and so may feed a cross).
    pub fn is_categorical(&self) -> bool {
        matches!(
            self,
            NumericTransform::Categorical | NumericTransform::Buckets(_)
        )
    }

    fn check(&self, key: &str, problems: &mut Vec<String>) {
        let NumericTransform::Buckets(bounds) = self else {
            return;
        };
        if bounds.is_empty() {
            problems.push(format!(
                "{key}.buckets must list at least one boundary, got []"
            ));
        }
        for (i, b) in bounds.iter().enumerate() {
            if !b.is_finite() {
                problems.push(format!(
                    "{key}.buckets[{i}] must be a finite number, got {b}"
                ));
            }
        }
        for (i, w) in bounds.windows(2).enumerate() {
            // Written so that NaN fails too (already reported above, but never "increasing").
            if w[0].partial_cmp(&w[1]) != Some(std::cmp::Ordering::Less) {
                problems.push(format!(
                    "{key}.buckets must be strictly increasing, got {} at [{i}] then {} at [{}]",
                    w[0],
                    w[1],
                    i + 1
                ));
            }
        }
    }
}

impl Serialize for NumericTransform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NumericTransform::Raw => s.serialize_str("raw"),
            NumericTransform::Log1p => s.serialize_str("log1p"),
            NumericTransform::Categorical => s.serialize_str("categorical"),
            NumericTransform::Buckets(b) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("buckets", b)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for NumericTransform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        const EXPECTED: &str = r#""raw", "log1p", "categorical" or { buckets = [..] }"#;
        impl<'de> Visitor<'de> for V {
            type Value = NumericTransform;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "raw" => Ok(NumericTransform::Raw),
                    "log1p" => Ok(NumericTransform::Log1p),
                    "categorical" => Ok(NumericTransform::Categorical),
                    other => Err(E::custom(format!(
                        "unknown numeric transform {other:?}, expected {EXPECTED}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut buckets = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "buckets" if buckets.is_none() => buckets = Some(map.next_value()?),
                        "buckets" => return Err(de::Error::duplicate_field("buckets")),
                        other => return Err(de::Error::unknown_field(other, &["buckets"])),
                    }
                }
                buckets
                    .map(NumericTransform::Buckets)
                    .ok_or_else(|| de::Error::missing_field("buckets"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<FeatureConfig, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn empty_table_gives_the_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, FeatureConfig::default());
        assert_eq!(c.bits, 22);
        assert_eq!(c.numeric_default, NumericTransform::Log1p);
        assert_eq!(c.numeric["position"], NumericTransform::Categorical);
        assert_eq!(c.numeric["hour"], NumericTransform::Categorical);
        assert_eq!(c.crosses.len(), 3);
        assert_eq!(c.crosses[0], ["user".to_owned(), "category".to_owned()]);
        assert!(c.validate().is_empty());
    }

    #[test]
    fn parses_every_transform() {
        let c = parse(
            r#"
            bits = 18
            numeric_default = "raw"
            crosses = [["user", "device"]]
            [numeric]
            price = "log1p"
            hour = "categorical"
            age = { buckets = [18, 25.5, 40] }
            dwell = "raw"
            "#,
        )
        .unwrap();
        assert_eq!(c.bits, 18);
        assert_eq!(c.numeric_default, NumericTransform::Raw);
        assert_eq!(c.numeric["price"], NumericTransform::Log1p);
        assert_eq!(c.numeric["dwell"], NumericTransform::Raw);
        assert_eq!(
            c.numeric["age"],
            NumericTransform::Buckets(vec![18.0, 25.5, 40.0])
        );
        // An explicit table replaces the default overrides.
        assert!(!c.numeric.contains_key("position"));
        assert!(c.validate().is_empty());
        // Round-trips through TOML.
        let back = parse(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn rejects_unknown_keys_and_transforms() {
        let e = parse("bitz = 3").unwrap_err().to_string();
        assert!(e.contains("bitz"), "{e}");
        let e = parse("numeric_default = \"sqrt\"").unwrap_err().to_string();
        assert!(e.contains("sqrt") && e.contains("log1p"), "{e}");
        let e = parse("numeric = { x = { bins = [1] } }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bins"), "{e}");
        let e = parse("numeric = { x = {} }").unwrap_err().to_string();
        assert!(e.contains("buckets"), "{e}");
        assert!(parse("crosses = [[\"a\"]]").is_err());
        assert!(parse("bits = 300").is_err(), "u8 overflow is a parse error");
    }

    #[test]
    fn validate_collects_every_problem() {
        let c = parse(
            r#"
            bits = 40
            numeric_default = { buckets = [] }
            crosses = [["device", "device"], ["user", "_p_true"], ["user", "item"], ["user", "item"]]
            [numeric]
            a = { buckets = [1, 1] }
            b = { buckets = [3, 2, nan, inf] }
            _p_true = "raw"
            user = "raw"
            "#,
        )
        .unwrap();
        let problems = c.validate();
        let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
        assert!(
            has("features.bits must be in 1..=30, got 40"),
            "{problems:#?}"
        );
        assert!(has(
            "features.numeric_default.buckets must list at least one boundary"
        ));
        assert!(has(
            "features.numeric.a.buckets must be strictly increasing, got 1 at [0] then 1 at [1]"
        ));
        assert!(has(
            "features.numeric.b.buckets must be strictly increasing, got 3 at [0] then 2 at [1]"
        ));
        assert!(has(
            "features.numeric.b.buckets[2] must be a finite number, got NaN"
        ));
        assert!(has(
            "features.numeric.b.buckets[3] must be a finite number, got inf"
        ));
        assert!(has(
            "features.numeric._p_true: field \"_p_true\" starts with `_`"
        ));
        assert!(has("features.numeric.user: `user` is an id"));
        assert!(has(
            "features.crosses[0] = [\"device\", \"device\"] names the same field twice"
        ));
        assert!(has(
            "features.crosses[1]: field \"_p_true\" starts with `_`"
        ));
        assert!(has(
            "features.crosses[3] = [\"user\", \"item\"] repeats features.crosses[2]"
        ));
        assert!(
            !problems
                .iter()
                .any(|p| p.starts_with("features.crosses[2]"))
        );
        assert_eq!(problems.len(), 13, "{problems:#?}");
    }

    #[test]
    fn bits_bounds() {
        for (bits, ok) in [(0, false), (1, true), (30, true), (31, false)] {
            let c = FeatureConfig {
                bits,
                ..FeatureConfig::default()
            };
            assert_eq!(c.validate().is_empty(), ok, "bits = {bits}");
        }
    }
}
