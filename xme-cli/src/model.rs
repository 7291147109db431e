//! What the commands show: regions found in `/dev/shm` by their header,
//! their snapshots (parsed by the crates that own each layout), the
//! processes using them, and the JSON of each.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use xme_core::inspect::{HeaderSnapshot, RegionFile, ShmUsers, kind_tag};
use xme_core::process;
use xme_monitor::{MONITOR_KIND, MonitorSnapshot};
use xme_shm::{LockSnapshot, MANAGER_KIND, ManagerSnapshot};

use crate::CliError;

/// What a region hosts, told by its header's kind tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An xme-shm Manager.
    Manager,
    /// An xme-monitor Monitor.
    Monitor,
    /// An xme region of a kind this build does not know (its tag).
    Unknown(u16),
}

impl Kind {
    /// The kind of a header's version word.
    pub fn of(version: u32) -> Kind {
        match kind_tag(version) {
            MANAGER_KIND => Kind::Manager,
            MONITOR_KIND => Kind::Monitor,
            tag => Kind::Unknown(tag),
        }
    }

    /// Its name, as `ls` prints it.
    pub fn name(self) -> String {
        match self {
            Kind::Manager => "Manager".into(),
            Kind::Monitor => "Monitor".into(),
            Kind::Unknown(tag) => format!("unknown ({tag:#06x})"),
        }
    }
}

/// One xme region found on this host, as `ls` lists it.
#[derive(Debug, Clone)]
pub struct RegionInfo {
    /// Its name in `/dev/shm`.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Its header.
    pub header: HeaderSnapshot,
    /// Whether its creator still runs.
    pub creator_alive: bool,
    /// Live processes mapping it (this one excepted).
    pub users: Vec<u32>,
    /// Whether some processes could not be looked at (another user's,
    /// without root), so `users` may miss some.
    pub users_unknown: bool,
    /// Time since it was created (its file's change time), if known.
    pub age: Option<Duration>,
}

impl RegionInfo {
    /// Whether every process that made or uses it is dead.
    pub fn abandoned(&self) -> bool {
        !self.creator_alive && self.users.is_empty() && !self.users_unknown
    }

    /// Its `ls --json` entry.
    pub fn json(&self) -> Value {
        json!({
            "name": self.name,
            "kind": self.kind.name(),
            "layout": self.header.version as u16,
            "size": self.header.size,
            "creator_pid": self.header.creator_pid,
            "creator_alive": self.creator_alive,
            "users": self.users,
            "users_unknown": self.users_unknown,
            "age_s": self.age.map(|a| a.as_secs_f64()),
        })
    }
}

/// Live processes mapping each `/dev/shm` name, this process excepted (it
/// maps what it reads).
pub fn users() -> ShmUsers {
    let me = std::process::id();
    let mut users = xme_core::inspect::shm_users();
    for pids in users.by_name.values_mut() {
        pids.retain(|&p| p != me && process::is_alive(p as i32));
    }
    users.unreadable.retain(|&p| process::is_alive(p as i32));
    users
}

/// Reads the region `name`'s header and who uses it.
///
/// # Errors
/// [`CliError::Region`] if it cannot be opened or is not an xme region.
pub fn region_info(name: &str, users: &ShmUsers) -> Result<(RegionFile, RegionInfo), CliError> {
    let file = RegionFile::open(name)?;
    let header = file.header()?;
    let age = std::fs::metadata(file.path()).ok().and_then(|m| {
        use std::os::unix::fs::MetadataExt;
        let ctime = UNIX_EPOCH + Duration::from_secs(m.ctime().max(0) as u64);
        SystemTime::now().duration_since(ctime).ok()
    });
    let info = RegionInfo {
        name: name.to_string(),
        kind: Kind::of(header.version),
        creator_alive: header.creator_alive(),
        users: users.by_name.get(name).cloned().unwrap_or_default(),
        users_unknown: !users.complete(),
        header,
        age,
    };
    Ok((file, info))
}

/// Files of `/dev/shm` that say they are xme regions (their magic word)
/// but cannot be read as one (truncated, corrupt), with why.
pub fn damaged() -> Vec<(String, String)> {
    let users = ShmUsers::default();
    xme_core::inspect::shm_names()
        .into_iter()
        .filter(|name| xme_core::inspect::starts_with_magic(name))
        .filter_map(|name| {
            let why = region_info(&name, &users).err()?;
            Some((name, xme_core::error_chain(&why)))
        })
        .collect()
}

/// Every xme region on this host (files of `/dev/shm` whose header says
/// so; others are not xme's and are skipped), by name.
pub fn list() -> Vec<RegionInfo> {
    let users = users();
    xme_core::inspect::shm_names()
        .iter()
        .filter_map(|name| region_info(name, &users).ok().map(|(_, info)| info))
        .collect()
}

/// A region's contents, read without changing it.
#[derive(Debug, Clone)]
pub enum Snapshot {
    /// A Manager.
    Manager(Box<ManagerSnapshot>),
    /// A Monitor.
    Monitor(Box<MonitorSnapshot>),
}

impl Snapshot {
    /// Reads `file`, whose kind `info` says.
    ///
    /// # Errors
    /// [`CliError::Unknown`] for a kind this build does not read; the
    /// owning crate's error for another layout version or a corrupt region.
    pub fn read(file: &RegionFile, info: &RegionInfo) -> Result<Snapshot, CliError> {
        match info.kind {
            Kind::Manager => Ok(Snapshot::Manager(Box::new(ManagerSnapshot::read(file)?))),
            Kind::Monitor => Ok(Snapshot::Monitor(Box::new(MonitorSnapshot::read(file)?))),
            Kind::Unknown(tag) => Err(CliError::Unknown {
                name: info.name.clone(),
                version: info.header.version,
                tag,
            }),
        }
    }

    /// Counters whose rates `top` shows: calls run by the Guard, values
    /// stored, status reports (a Monitor: maps published, then zeros).
    pub fn counters(&self) -> [u64; 3] {
        match self {
            Snapshot::Manager(m) => [m.guard.calls_run, m.writes, m.status_reports],
            Snapshot::Monitor(m) => [0, m.publishes, 0],
        }
    }
}

/// Opens `name` and reads everything `show` and `top` need.
///
/// # Errors
/// As [`region_info`] and [`Snapshot::read`].
pub fn inspect(name: &str) -> Result<(RegionInfo, Snapshot), CliError> {
    let (file, info) = region_info(name, &users())?;
    let snap = Snapshot::read(&file, &info)?;
    Ok((info, snap))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since `time_ms` (ms since the epoch).
pub fn age_s(time_ms: u64) -> f64 {
    now_ms().saturating_sub(time_ms) as f64 / 1000.0
}

/// Seconds since a `monotonic_ns` stamp.
pub fn since_ns(stamp: u64) -> f64 {
    xme_core::monotonic_ns().saturating_sub(stamp) as f64 / 1e9
}

/// Bytes as hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a typeless value most likely is, when it can be told: JSON text
/// (the Manager's `__MSG__`), or a postcard string (a `String` or `&str`
/// stored with `set`), shown as text.
pub fn value_hint(value_len: usize, preview: &[u8]) -> Option<Value> {
    if preview.len() == value_len
        && let Ok(v) = serde_json::from_slice::<Value>(preview)
        && (v.is_object() || v.is_array())
    {
        return Some(v);
    }
    // postcard: a varint length, then the UTF-8 bytes.
    let (mut n, mut shift, mut at) = (0usize, 0, 0);
    loop {
        let b = *preview.get(at)?;
        n |= usize::from(b & 0x7f) << shift;
        at += 1;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 35 {
            return None;
        }
    }
    if at + n != value_len || n == 0 {
        return None;
    }
    let text = &preview[at..];
    let text = match std::str::from_utf8(text) {
        Ok(t) => t,
        // A preview may cut a character: keep what is whole.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&text[..e.valid_up_to()]).ok()?,
        Err(_) => return None,
    };
    text.chars()
        .all(|c| !c.is_control())
        .then(|| Value::String(text.to_string()))
}

fn lock_json(lock: &Option<LockSnapshot>) -> Value {
    let Some(l) = lock else {
        return Value::Null;
    };
    json!({
        "type": l.lock_type.to_string(),
        "holder": l.holder.map(|(pid, op)| json!({
            "pid": pid,
            "operator": op.map(|o| o.to_string()),
            "alive": process::is_alive(pid as i32),
        })),
        "readers": l.readers,
        "waiters": l.waiters,
        "writer": l.writer.to_string(),
    })
}

/// `show --json` of a region.
pub fn show_json(info: &RegionInfo, snap: &Snapshot) -> Value {
    let mut out = info.json();
    let extra = match snap {
        Snapshot::Manager(m) => {
            let classes: Vec<Value> = m
                .pages
                .classes
                .iter()
                .filter(|c| c.pages > 0)
                .map(|c| {
                    json!({
                        "block_bytes": c.block_bytes,
                        "pages": c.pages,
                        "blocks_taken": c.blocks_taken,
                        "blocks_total": c.blocks_total,
                    })
                })
                .collect();
            json!({
                "capacity": m.capacity,
                "slots": m.slots,
                "keys_claimed": m.keys_claimed,
                "arena": {
                    "bytes": m.arena_bytes,
                    "pages_total": m.pages.total,
                    "pages_free": m.pages.free,
                    "classes": classes,
                    "extents": m.pages.extents,
                    "extent_pages": m.pages.extent_pages,
                },
                "keys": m.keys.iter().map(|k| {
                    let mut v = json!({"key": k.key, "bytes": k.value_len, "hex": hex(&k.preview)});
                    if let Some(hint) = value_hint(k.value_len, &k.preview) {
                        v["value"] = hint;
                    }
                    v
                }).collect::<Vec<_>>(),
                "statuses": m.statuses.iter().map(|s| json!({
                    "operator": s.operator.to_string(),
                    "pid": s.status.pid,
                    "alive": process::is_alive(s.status.pid as i32),
                    "status": s.status.status,
                    "age_s": age_s(s.status.time_ms),
                    "serial": s.status.serial,
                    "last_word": s.status.last_word,
                })).collect::<Vec<_>>(),
                "status_reports": m.status_reports,
                "writes": m.writes,
                "guard": {
                    "pid": m.guard.pid,
                    "alive": m.guard.pid.is_some_and(|p| process::is_alive(p as i32)),
                    "calls_queued": m.guard.calls_queued,
                    "calls_run": m.guard.calls_run,
                    "last_beat_s": m.guard.last_beat_ns.map(since_ns),
                    "enabled": m.guard.enabled,
                },
                "lock": lock_json(&m.lock),
                "changing": m.changing,
            })
        }
        Snapshot::Monitor(m) => json!({
            "capacity": m.capacity,
            "bytes": m.bytes,
            "publishes": m.publishes,
            "messages": m.messages,
            "lock": lock_json(&m.lock),
        }),
    };
    if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
        out.extend(extra);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_tell_strings_and_json_and_nothing_else() {
        let s = postcard::to_stdvec("hello").unwrap();
        assert_eq!(value_hint(s.len(), &s), Some(json!("hello")));
        assert_eq!(
            value_hint(2, b"{}").map(|v| v.to_string()),
            Some("{}".into())
        );
        let n = postcard::to_stdvec(&42u32).unwrap();
        assert_eq!(value_hint(n.len(), &n), None);
        // A long string cut to its preview keeps its whole characters.
        let long = postcard::to_stdvec(&"é".repeat(40)).unwrap();
        let hint = value_hint(long.len(), &long[..32]).unwrap();
        assert!(hint.as_str().unwrap().starts_with("éé"), "{hint}");
    }

    #[test]
    fn kinds_come_from_the_tag() {
        assert_eq!(Kind::of(u32::from(MANAGER_KIND) << 16 | 5), Kind::Manager);
        assert_eq!(Kind::of(u32::from(MONITOR_KIND) << 16), Kind::Monitor);
        assert_eq!(Kind::of(0x1234_0001), Kind::Unknown(0x1234));
    }
}
