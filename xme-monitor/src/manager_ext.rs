//! The Manager's message methods of the seed (`get_msg`, `update_msg`,
//! `delete_msg`, `copy_msg`), as an extension trait.

use std::collections::HashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use xme_core::Operator;
use xme_shm::{GUARD_KEY, GuardTable, Manager, STATUS_KEY, StatusTable, XMEM_KEY};

use crate::{Message, MonitorError};

/// The Manager key holding its message map (JSON text).
pub const MESSAGE_KEY: &str = "__MSG__";

type View = fn(&[u8]) -> Result<Value, String>;

fn view_as<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<Value, String> {
    let v: T = postcard::from_bytes(bytes)
        .map_err(|e| format!("not a {}: {e}", std::any::type_name::<T>()))?;
    serde_json::to_value(&v).map_err(|e| e.to_string())
}

/// How to show the Manager's values as JSON in [`ManagerMessages::copy_msg`].
///
/// Table values are postcard bytes, which do not say their type, so each key
/// to show needs its type: `JsonViews::new().with::<u64>("hits")`. The
/// reserved tables (`__STATUS__`, `__GUARD__`, `__XMEM__`) are always shown.
/// A key without a view, or whose bytes are not its view's type, is listed
/// in [`CopyReport::unshown`] and appears in the map as
/// `{"$unshown": "<why>", "$bytes": <length>}`: never silently dropped.
#[derive(Debug, Clone, Default)]
pub struct JsonViews {
    views: HashMap<String, View>,
}

impl JsonViews {
    /// Views for the reserved tables only.
    pub fn new() -> JsonViews {
        JsonViews::default()
            .with::<StatusTable>(STATUS_KEY)
            .with::<GuardTable>(GUARD_KEY)
            .with::<Vec<String>>(XMEM_KEY)
    }

    /// Shows `key` as a `T`.
    pub fn with<T: DeserializeOwned + Serialize>(mut self, key: &str) -> JsonViews {
        self.views.insert(key.to_string(), view_as::<T>);
        self
    }
}

/// What [`ManagerMessages::copy_msg`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Keys shown as JSON.
    pub shown: usize,
    /// Keys that could not be shown, and why.
    pub unshown: Vec<(String, String)>,
}

fn parse(text: Option<String>) -> Result<Message, MonitorError> {
    match text {
        None => Ok(Message::new()),
        Some(t) => match serde_json::from_str(&t).map_err(MonitorError::BadJson)? {
            Value::Object(m) => Ok(m),
            other => Err(MonitorError::NotAnObject {
                found: crate::python::kind(&other),
            }),
        },
    }
}

/// The seed's Manager message methods, over a message map kept in the
/// Manager's value table under [`MESSAGE_KEY`] (as JSON text, so at most
/// about 64 KiB; use a [`Monitor`](crate::Monitor) for larger maps). Writes
/// take the Manager's lock as the operator, then change the map with one
/// atomic read-modify-write, so readers see it whole.
///
/// ```
/// use serde_json::json;
/// use xme_core::Operator;
/// use xme_monitor::{JsonViews, ManagerMessages};
/// use xme_shm::XmemBuilder;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let xmem = XmemBuilder::new().value("hits", &3u64)?.value("blob", &[1u8, 2])?.build()?;
/// xmem.update_msg(json!({"note": "hello"}), Operator::ADMIN)?;
/// assert_eq!(xmem.get_msg(&["note"])?, "hello");
/// let report = xmem.copy_msg(&JsonViews::new().with::<u64>("hits"), Operator::ADMIN)?;
/// assert_eq!(xmem.get_msg(&["hits"])?, 3);
/// assert_eq!(report.unshown[0].0, "blob"); // no view for it: reported, and marked
/// assert_eq!(xmem.get_msg(&["blob"])?["$bytes"], 2);
/// # Ok(())
/// # }
/// ```
pub trait ManagerMessages {
    /// With no key, the whole message map; one key, its value; several, the sub-map.
    fn get_msg(&self, keys: &[&str]) -> Result<Value, MonitorError>;
    /// Merges `message` (a JSON object) into the message map as `op`.
    fn update_msg(&self, message: impl Into<Value>, op: Operator) -> Result<(), MonitorError>;
    /// Deletes `keys` (no key: all) from the message map as `op`; returns how many existed.
    fn delete_msg(&self, keys: &[&str], op: Operator) -> Result<usize, MonitorError>;
    /// Replaces the message map with a JSON view of the value table
    /// (reserved tables included) as `op`.
    fn copy_msg(&self, views: &JsonViews, op: Operator) -> Result<CopyReport, MonitorError>;
}

fn change<T>(m: &Manager, op: Operator, f: impl Fn(&mut Message) -> T) -> Result<T, MonitorError> {
    let _lock = m.security().lock(op)?;
    let mut out = None;
    let mut failure = None;
    m.update_with(MESSAGE_KEY, |old: Option<String>| {
        let mut map = match parse(old.clone()) {
            Ok(map) => map,
            Err(e) => {
                failure = Some(e);
                return old.unwrap_or_default();
            }
        };
        out = Some(f(&mut map));
        serde_json::to_string(&map).unwrap_or_default()
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(out.expect("the change ran")),
    }
}

impl ManagerMessages for Manager {
    fn get_msg(&self, keys: &[&str]) -> Result<Value, MonitorError> {
        let map = match self.get::<String>(MESSAGE_KEY) {
            Ok(text) => parse(Some(text))?,
            Err(xme_shm::ShmError::NotFound(_)) => Message::new(),
            Err(e) => return Err(e.into()),
        };
        crate::select(map, keys)
    }

    fn update_msg(&self, message: impl Into<Value>, op: Operator) -> Result<(), MonitorError> {
        let new = match message.into() {
            Value::Object(m) => m,
            other => {
                return Err(MonitorError::NotAnObject {
                    found: crate::python::kind(&other),
                });
            }
        };
        change(self, op, |map| map.extend(new.clone()))
    }

    fn delete_msg(&self, keys: &[&str], op: Operator) -> Result<usize, MonitorError> {
        change(self, op, |map| {
            if keys.is_empty() {
                let n = map.len();
                map.clear();
                n
            } else {
                keys.iter()
                    .filter(|k| map.shift_remove(**k).is_some())
                    .count()
            }
        })
    }

    fn copy_msg(&self, views: &JsonViews, op: Operator) -> Result<CopyReport, MonitorError> {
        let mut map = Message::new();
        let mut report = CopyReport {
            shown: 0,
            unshown: Vec::new(),
        };
        for (key, raw) in self.items()? {
            if key == MESSAGE_KEY {
                continue;
            }
            let shown = match views.views.get(&key) {
                Some(view) => view(raw.bytes()),
                None => Err("no JSON view registered for this key".to_string()),
            };
            match shown {
                Ok(v) => {
                    report.shown += 1;
                    map.insert(key, v);
                }
                Err(why) => {
                    map.insert(
                        key.clone(),
                        serde_json::json!({"$unshown": why, "$bytes": raw.bytes().len()}),
                    );
                    report.unshown.push((key, why));
                }
            }
        }
        change(self, op, |m| *m = map.clone())?;
        Ok(report)
    }
}
