//! Reading named regions from outside, without changing them: for tools
//! (the `xme` command) that show what a running system holds.
//!
//! A [`RegionFile`] maps `/dev/shm/<name>` from a descriptor opened
//! read-only, with a read-only mapping (`PROT_READ`): a store through it
//! would fault, so no reader built on it can change a region, take a lock
//! or disturb a writer. The crates that own each layout (xme-shm for the
//! Manager, xme-monitor for the Monitor, xme-security for locks) parse the
//! words into plain snapshots; this module knows only the common header.
//!
//! Every region's header holds a magic word and a `version` whose high 16
//! bits name what the region hosts (two ASCII letters, [`kind_tag`]) and
//! whose low 16 bits its layout version, so a reader tells a region's kind
//! by its header, never by its name, and says which layout version a region
//! it cannot read has.
//!
//! Loads through the mapping are atomic loads of aligned 8-byte words
//! (`Relaxed` or `Acquire`): on the targets xme builds for (x86-64,
//! AArch64) both are plain loads, which read-only pages allow.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use crate::Error;
use crate::region::RegionHeader;

/// Where named regions live.
pub const SHM_DIR: &str = "/dev/shm";

/// The kind tag of a region's `version` word: its high 16 bits.
///
/// ```
/// assert_eq!(xme_core::inspect::kind_tag(0x4d47_0005), 0x4d47);
/// ```
pub const fn kind_tag(version: u32) -> u16 {
    (version >> 16) as u16
}

/// The region header's fields, as read once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSnapshot {
    /// Kind tag (high 16 bits) and layout version (low 16 bits).
    pub version: u32,
    /// Total size in bytes, header included.
    pub size: u64,
    /// Pid of the creating process.
    pub creator_pid: u32,
    /// The creator's start time (clock ticks since boot), 0 if not recorded.
    pub creator_start: u64,
    /// The random token fixed at creation.
    pub token: u64,
}

impl HeaderSnapshot {
    /// Whether the creator still runs (the same process, not a later one
    /// with its pid, when its start time was recorded).
    pub fn creator_alive(&self) -> bool {
        crate::process::is_same_process(self.creator_pid as i32, self.creator_start)
    }
}

/// A named region mapped read-only.
///
/// ```
/// use xme_core::SharedRegion;
/// use xme_core::inspect::RegionFile;
///
/// let name = format!("xme-doc-inspect-{}", std::process::id());
/// let region = SharedRegion::create_named(&name, 64, 0x5445_0001).unwrap();
/// let file = RegionFile::open(&name).unwrap();
/// let header = file.header().unwrap();
/// assert_eq!((header.version, header.creator_pid), (0x5445_0001, std::process::id()));
/// assert!(header.creator_alive());
/// drop(region); // its creator removes it
/// assert!(RegionFile::open(&name).is_err());
/// ```
#[derive(Debug)]
pub struct RegionFile {
    map: Mmap,
    name: String,
    path: PathBuf,
}

impl RegionFile {
    /// Maps `/dev/shm/<name>` read-only.
    ///
    /// # Errors
    /// [`Error::RegionOpen`] if the name is unusable or the file cannot be
    /// opened or mapped; [`Error::HeaderMismatch`] if it is too small to be
    /// a region.
    pub fn open(name: &str) -> Result<RegionFile, Error> {
        crate::region::os_id(name)?;
        Self::open_path(&Path::new(SHM_DIR).join(name))
    }

    /// Maps the file at `path` read-only (its name is the file name).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_path(path: &Path) -> Result<RegionFile, Error> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let open_err = |reason: String| Error::RegionOpen {
            name: name.clone(),
            reason,
        };
        // Never block (a FIFO would wait for a writer for ever) and never
        // follow a link out of the directory: only a plain file is a region.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| open_err(e.to_string()))?;
        let meta = file.metadata().map_err(|e| open_err(e.to_string()))?;
        if !meta.is_file() {
            return Err(open_err(
                "not a plain file (a region is one), so not an xme region".into(),
            ));
        }
        let len = meta.len();
        if len < RegionHeader::RESERVED as u64 {
            return Err(Error::HeaderMismatch {
                what: format!("{name:?} is {len} bytes, too small for a region header"),
            });
        }
        // SAFETY: the mapping is read-only (`PROT_READ`, from a descriptor
        // opened read-only), so nothing here can write through it; other
        // processes change its bytes only through atomics, which is why it
        // is only ever read as `AtomicU64`s (`words`). xme never resizes a
        // named region; a foreign program truncating the file under us
        // could make a read fault (SIGBUS), which no mapping of shared
        // memory can prevent.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| open_err(e.to_string()))?;
        Ok(RegionFile {
            map,
            name,
            path: path.to_path_buf(),
        })
    }

    /// The region's name (its file name in `/dev/shm`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is mapped (never, for an opened region).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every word of the file, header included.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so 8-byte aligned) and
        // `len / 8` words lie inside it; `AtomicU64` is valid for every bit
        // pattern and the borrow is tied to `self`, which keeps the mapping.
        // The words are only loaded (the pages are read-only).
        unsafe {
            std::slice::from_raw_parts(self.map.as_ptr() as *const AtomicU64, self.map.len() / 8)
        }
    }

    /// The words after the header: what `SharedRegion::place` calls offset 0.
    pub fn payload(&self) -> &[AtomicU64] {
        &self.words()[RegionHeader::RESERVED / 8..]
    }

    /// The header, checked to be an initialised xme region of this file's size.
    ///
    /// # Errors
    /// [`Error::HeaderMismatch`] naming what is wrong: not an xme region
    /// (magic), or a size field that does not match the file.
    pub fn header(&self) -> Result<HeaderSnapshot, Error> {
        let h: &RegionHeader = crate::view(self.words()).ok_or_else(|| Error::HeaderMismatch {
            what: "too small for a region header".into(),
        })?;
        let magic = h.magic.load(Ordering::Acquire);
        if magic != RegionHeader::MAGIC {
            return Err(Error::HeaderMismatch {
                what: format!(
                    "{:?} is not an xme region (magic is {magic:#018x}, expected {:#018x})",
                    self.name,
                    RegionHeader::MAGIC
                ),
            });
        }
        let size = h.size.load(Ordering::Relaxed);
        if size != self.map.len() as u64 {
            return Err(Error::HeaderMismatch {
                what: format!(
                    "{:?}: size field is {size}, the file is {} bytes (corrupt or truncated)",
                    self.name,
                    self.map.len()
                ),
            });
        }
        Ok(HeaderSnapshot {
            version: h.version.load(Ordering::Relaxed),
            size,
            creator_pid: h.creator_pid.load(Ordering::Relaxed) as u32,
            creator_start: h.creator_start.load(Ordering::Relaxed),
            token: h.token.load(Ordering::Relaxed),
        })
    }
}

/// The names of the files in `/dev/shm`, sorted (xme's and others': open
/// each with [`RegionFile::open`] to tell).
pub fn shm_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(SHM_DIR)
        .map(|dir| {
            dir.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Whether the file `name` of `/dev/shm` begins with an xme region's magic
/// word, whatever else it holds (a truncated or corrupt region still says
/// it was xme's; a foreign file does not). Never blocks, follows no link.
pub fn starts_with_magic(name: &str) -> bool {
    use std::io::Read;
    if crate::region::os_id(name).is_err() {
        return false;
    }
    let Ok(mut file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(Path::new(SHM_DIR).join(name))
    else {
        return false;
    };
    let mut word = [0u8; 8];
    file.metadata().is_ok_and(|m| m.is_file())
        && file.read_exact(&mut word).is_ok()
        && u64::from_le_bytes(word) == RegionHeader::MAGIC
}

/// Who maps what in `/dev/shm`, as far as this user can see.
#[derive(Debug, Default, Clone)]
pub struct ShmUsers {
    /// For each name, the pids of the processes that map it (a mapping of
    /// a removed name, `(deleted)`, counts for the name).
    pub by_name: BTreeMap<String, Vec<u32>>,
    /// Processes whose maps could not be read (another user's, without
    /// root): any of them may map any region. Root counts none: what root
    /// may not read (a process of a parent namespace) cannot have attached
    /// here.
    pub unreadable: Vec<u32>,
    /// `/proc` hides other users' processes from this one (`hidepid`):
    /// processes not listed may map any region.
    pub hidden: bool,
}

impl ShmUsers {
    /// Whether every process that may map a region was seen.
    pub fn complete(&self) -> bool {
        self.unreadable.is_empty() && !self.hidden
    }
}

/// Who maps each `/dev/shm` name, from every readable `/proc/<pid>/maps`;
/// processes whose maps cannot be read, and a `/proc` that hides other
/// users' processes, are reported so that nobody takes "none seen" for
/// "none".
///
/// ```
/// use xme_core::SharedRegion;
/// let name = format!("xme-doc-users-{}", std::process::id());
/// let region = SharedRegion::create_named(&name, 64, 1).unwrap();
/// let users = xme_core::inspect::shm_users();
/// assert!(users.by_name[&name].contains(&std::process::id()));
/// # drop(region);
/// ```
pub fn shm_users() -> ShmUsers {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut users = ShmUsers {
        hidden: !root && proc_hides_others(),
        ..ShmUsers::default()
    };
    let Ok(proc_dir) = std::fs::read_dir("/proc") else {
        users.hidden = true;
        return users;
    };
    let prefix = format!("{SHM_DIR}/");
    for entry in proc_dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let maps = match std::fs::read_to_string(entry.path().join("maps")) {
            Ok(maps) => maps,
            // Ended since the listing: it maps nothing now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // Root reads every process's maps but those it may not trace
            // at all (a container's init from its parent namespace, say):
            // those cannot have attached a region here either.
            Err(_) if root => continue,
            Err(_) => {
                users.unreadable.push(pid);
                continue;
            }
        };
        for line in maps.lines() {
            let Some(at) = line.find(&prefix) else {
                continue;
            };
            let name = line[at + prefix.len()..].trim_end_matches(" (deleted)");
            let pids = users.by_name.entry(name.to_string()).or_default();
            if pids.last() != Some(&pid) {
                pids.push(pid);
            }
        }
    }
    users
}

/// Whether `/proc` is mounted so that this (non-root) user cannot see
/// other users' processes (`hidepid=1|2|noaccess|invisible`).
fn proc_hides_others() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[1] == "/proc"
                && f[3].split(',').any(|o| {
                    matches!(
                        o,
                        "hidepid=1" | "hidepid=2" | "hidepid=noaccess" | "hidepid=invisible"
                    )
                })
        })
    })
}
