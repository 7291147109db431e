//! `ls`, `show`, `rm` and `clean`.

use std::fmt::Write as _;

use xme_core::SharedRegion;
use xme_core::process;

use crate::CliError;
use crate::model::{self, RegionInfo, Snapshot};

fn pids(pids: &[u32]) -> String {
    if pids.is_empty() {
        "-".into()
    } else {
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `s` with control characters (escape sequences, new lines) shown
/// escaped: names, keys and statuses come from any process that can write
/// the region, and must not drive the terminal.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A duration for people: `3s`, `4m12s`, `2h03m`, `5d04h`.
pub fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Bytes for people: `512 B`, `64.0 KiB`, `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let (mut v, mut unit) = (n as f64 / 1024.0, 0);
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `alive`, or `DEAD` (capitals: it should catch the eye).
pub fn alive(yes: bool) -> &'static str {
    if yes { "alive" } else { "DEAD" }
}

/// `xme ls`.
pub fn ls(json: bool) -> Result<(), CliError> {
    let regions = model::list();
    if json {
        let all: Vec<_> = regions.iter().map(RegionInfo::json).collect();
        println!("{}", serde_json::Value::Array(all));
        return Ok(());
    }
    let damaged = model::damaged();
    for (name, why) in &damaged {
        eprintln!(
            "xme: {} is an xme region that cannot be read: {why} (xme rm --force {} removes it)",
            printable(name),
            printable(name)
        );
    }
    if regions.is_empty() {
        println!("no xme regions in {}", xme_core::inspect::SHM_DIR);
        return Ok(());
    }
    println!(
        "{:<32} {:<8} {:>10} {:>8} {:<6} {:<20} {:>7}",
        "NAME", "KIND", "SIZE", "CREATOR", "", "USERS", "AGE"
    );
    for r in &regions {
        println!(
            "{:<32} {:<8} {:>10} {:>8} {:<6} {:<20} {:>7}",
            printable(&r.name),
            r.kind.name(),
            bytes(r.header.size),
            r.header.creator_pid,
            alive(r.creator_alive),
            pids(&r.users) + if r.users_unknown { "+?" } else { "" },
            r.age.map_or("?".into(), |a| age(a.as_secs_f64())),
        );
    }
    Ok(())
}

/// `xme show NAME`.
pub fn show(name: &str, json: bool) -> Result<(), CliError> {
    let (info, snap) = model::inspect(name)?;
    if json {
        println!("{}", model::show_json(&info, &snap));
    } else {
        print!("{}", text(&info, &snap));
    }
    Ok(())
}

/// The text of `show`.
pub fn text(info: &RegionInfo, snap: &Snapshot) -> String {
    let v = model::show_json(info, snap);
    let mut out = String::new();
    let _ = writeln!(out, "{}, used by {}", region_line(info), pids(&info.users));
    match snap {
        Snapshot::Manager(m) => {
            let _ = writeln!(
                out,
                "table: {} of {} keys claimed ({} slots); {} values stored, {} status reports",
                m.keys_claimed, m.capacity, m.slots, m.writes, m.status_reports
            );
            let _ = writeln!(
                out,
                "arena: {}, {} of {} pages free; {} extents ({} pages)",
                bytes(m.arena_bytes as u64),
                m.pages.free,
                m.pages.total,
                m.pages.extents,
                m.pages.extent_pages
            );
            for c in m.pages.classes.iter().filter(|c| c.pages > 0) {
                let _ = writeln!(
                    out,
                    "  {:>9} blocks: {} pages, {}/{} blocks taken",
                    bytes(c.block_bytes as u64),
                    c.pages,
                    c.blocks_taken,
                    c.blocks_total
                );
            }
            let _ = writeln!(out, "{}", guard_line(&m.guard));
            let _ = writeln!(out, "lock: {}", lock_line(&m.lock));
            let _ = writeln!(out, "statuses ({}):", m.statuses.len());
            let _ = writeln!(
                out,
                "  {:<18} {:>8} {:<6} {:>7}  STATUS",
                "OPERATOR", "PID", "", "AGE"
            );
            for s in &m.statuses {
                let _ = writeln!(
                    out,
                    "  {:<18} {:>8} {:<6} {:>7}  {}",
                    s.operator.to_string(),
                    s.status.pid,
                    alive(process::is_alive(s.status.pid as i32)),
                    age(model::age_s(s.status.time_ms)),
                    printable(&s.status.status)
                );
            }
            let _ = writeln!(out, "keys ({}):", m.keys.len());
            for (k, j) in m
                .keys
                .iter()
                .zip(v["keys"].as_array().into_iter().flatten())
            {
                let shown = match &j["value"] {
                    serde_json::Value::Null => format!("hex {}", j["hex"].as_str().unwrap_or("")),
                    hint => hint.to_string(),
                };
                let _ = writeln!(
                    out,
                    "  {:<24} {:>9}  {}",
                    printable(&k.key),
                    bytes(k.value_len as u64),
                    shown
                );
            }
            if m.changing {
                let _ = writeln!(out, "(entries moved while read: a key may be missing)");
            }
        }
        Snapshot::Monitor(m) => {
            let _ = writeln!(
                out,
                "messages: {} of {} bytes, {} publishes",
                m.bytes, m.capacity, m.publishes
            );
            let _ = writeln!(out, "lock: {}", lock_line(&m.lock));
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&m.messages).unwrap_or_default()
            );
        }
    }
    out
}

/// A region in one line: name, kind, layout, size, creator and whether it lives.
pub fn region_line(info: &RegionInfo) -> String {
    format!(
        "{}  {} (layout {}, {})  creator {} {}",
        printable(&info.name),
        info.kind.name(),
        info.header.version as u16,
        bytes(info.header.size),
        info.header.creator_pid,
        alive(info.creator_alive),
    )
}

/// The Guard in one line: pid and whether it lives, calls queued and run,
/// its last idle check.
pub fn guard_line(g: &xme_shm::GuardSnapshot) -> String {
    format!(
        "guard: {}  queued {}  run {}  idle check {}",
        g.pid.map_or("none".into(), |p| format!(
            "pid {p} {}",
            alive(process::is_alive(p as i32))
        )),
        g.calls_queued,
        g.calls_run,
        g.last_beat_ns.map_or("never".into(), |b| format!(
            "{} ago",
            age(model::since_ns(b))
        ))
    )
}

/// A lock in one line: type, holder and whether it lives, readers, waiters.
pub fn lock_line(lock: &Option<xme_shm::LockSnapshot>) -> String {
    let Some(l) = lock else {
        return "not initialised".into();
    };
    let holder = match l.holder {
        None => "free".to_string(),
        Some((pid, op)) => format!(
            "held by pid {pid} ({}){}",
            alive(process::is_alive(pid as i32)),
            op.map_or(String::new(), |o| format!(" as {o}"))
        ),
    };
    format!(
        "{}, {holder}, {} readers, {} waiting",
        l.lock_type,
        l.readers.len(),
        l.waiters
    )
}

/// `xme rm NAME`.
pub fn rm(name: &str, force: bool) -> Result<(), CliError> {
    let users = model::users();
    let (_file, info) = match model::region_info(name, &users) {
        Ok(found) => found,
        // A region too damaged to read can still go, if the user insists
        // and it was xme's.
        Err(e) if force && xme_core::inspect::starts_with_magic(name) => {
            SharedRegion::remove_named(name)?;
            println!(
                "removed {} (an xme region that could not be read: {e})",
                printable(name)
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut live = info.users.clone();
    if info.creator_alive && !live.contains(&info.header.creator_pid) {
        live.push(info.header.creator_pid);
    }
    if !live.is_empty() && !force {
        return Err(CliError::InUse {
            name: name.into(),
            pids: live,
        });
    }
    if info.users_unknown && !force {
        return Err(CliError::UsersUnknown {
            name: name.into(),
            unseen: users.unreadable.len(),
            hidden: if users.hidden {
                ", and /proc hides other users' processes"
            } else {
                ""
            },
        });
    }
    SharedRegion::remove_named(name)?;
    println!("removed {name} ({})", info.kind.name());
    Ok(())
}

/// `xme clean`.
pub fn clean(dry_run: bool, only: Option<&str>) -> Result<(), CliError> {
    let mut found = 0;
    let regions: Vec<RegionInfo> = model::list()
        .into_iter()
        .filter(|r| only.is_none_or(|p| r.name.starts_with(p)))
        .collect();
    let unsure = regions
        .iter()
        .filter(|r| !r.creator_alive && r.users.is_empty() && r.users_unknown)
        .count();
    for r in regions.iter().filter(|r| r.abandoned()) {
        found += 1;
        let what = format!(
            "{} ({}, {}, creator {} dead)",
            printable(&r.name),
            r.kind.name(),
            bytes(r.header.size),
            r.header.creator_pid
        );
        if dry_run {
            println!("would remove {what}");
        } else {
            SharedRegion::remove_named(&r.name)?;
            println!("removed {what}");
        }
    }
    if unsure > 0 {
        println!(
            "left {unsure} region(s) whose creator is dead: processes of other users could not be looked at, and any may use them (run as root, or xme rm --force NAME)"
        );
    } else if found == 0 && regions.is_empty() {
        println!("nothing to clean: no xme regions");
    } else if found == 0 {
        println!("nothing to clean: every xme region has a live process");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_sizes_read_well() {
        assert_eq!(age(3.2), "3s");
        assert_eq!(age(252.0), "4m12s");
        assert_eq!(age(7380.0), "2h03m");
        assert_eq!(age(446_400.0), "5d04h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(65536), "64.0 KiB");
        assert_eq!(bytes(3 << 19), "1.5 MiB");
    }
}
