//! `WITH (key = 'value', ...)` options of a source, with typed access and a check that
//! every option given was understood.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::error::{ConnectorError, Result};

/// Options by lower-cased key.
#[derive(Debug, Clone, Default)]
pub struct Options {
    values: BTreeMap<String, String>,
    read: RefCell<BTreeSet<String>>,
}

impl Options {
    pub fn new(values: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            values: values
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
            read: RefCell::new(BTreeSet::new()),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.read.borrow_mut().insert(key.to_string());
        self.values.get(key).map(String::as_str)
    }

    pub fn u64(&self, key: &str, default: u64) -> Result<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| {
                ConnectorError::Options(format!(
                    "option {key} must be a non-negative integer, not '{v}'"
                ))
            }),
        }
    }

    pub fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| {
                    ConnectorError::Options(format!("option {key} must be a number, not '{v}'"))
                }),
        }
    }

    /// Keys under `prefix.` (e.g. datagen's per-field options).
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Fails on an option nobody read: a typo must not be silently ignored.
    pub fn check_all_used(&self) -> Result<()> {
        let read = self.read.borrow();
        let unknown: Vec<&str> = self
            .values
            .keys()
            .filter(|k| !read.contains(*k) && k.as_str() != "connector")
            .map(String::as_str)
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(ConnectorError::Options(format!(
                "unknown option{} {}",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", ")
            )))
        }
    }
}
