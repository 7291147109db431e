use std::fs::File;
use std::mem::{align_of, size_of};
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize,
    Ordering,
};

use memmap2::MmapMut;

use crate::Error;

/// Types that may live in a shared region.
///
/// # Safety
/// An implementor must be valid when all its bytes are zero, contain no
/// pointers or references (other processes map the region at other addresses),
/// and be safe to access concurrently from several processes (atomics or data
/// only touched under a protocol built from atomics).
pub unsafe trait InRegion: Sync {}

macro_rules! in_region {
    ($($t:ty),*) => {$(
        // SAFETY: atomics of primitive integers are valid at zero, hold no
        // pointers, and are made for concurrent access.
        unsafe impl InRegion for $t {}
    )*};
}
in_region!(
    AtomicBool,
    AtomicI32,
    AtomicI64,
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize
);
// SAFETY: an array of InRegion values is zero-valid, pointer-free and Sync
// element by element.
unsafe impl<T: InRegion, const N: usize> InRegion for [T; N] {}

/// The header at the start of every region: who made it and with which layout.
#[repr(C)]
#[derive(Debug)]
pub struct RegionHeader {
    /// [`RegionHeader::MAGIC`] once the region is initialised.
    pub magic: AtomicU64,
    /// Layout version of whatever the region hosts.
    pub version: AtomicU32,
    _pad: AtomicU32,
    /// Total size of the region in bytes, header included.
    pub size: AtomicU64,
    /// Pid of the process that created the region.
    pub creator_pid: AtomicU64,
    /// A random token fixed at creation; attaching processes compare it.
    pub token: AtomicU64,
}

// SAFETY: made only of atomics; all-zero means "not initialised yet".
unsafe impl InRegion for RegionHeader {}

impl RegionHeader {
    /// `"XMEREGN1"` as a little-endian word.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"XMEREGN1");
    /// Bytes reserved for the header; the payload starts here (cache-line aligned).
    pub const RESERVED: usize = 64;
}

enum Backing {
    /// A `memfd` mapped `MAP_SHARED`: shared with forked children.
    /// (memmap2's `map_anon` is `MAP_PRIVATE`, copy-on-write after fork: not shared.)
    Anonymous { _file: File },
}

/// A region of memory shared between processes.
///
/// Today's kind is anonymous: shared by a process and the children it forks
/// after creating the region. Every region starts with a [`RegionHeader`]
/// (magic, layout version, size, creator pid, random token); callers address
/// the payload after it by offset, never by pointer, through
/// [`place`](Self::place) and [`slice`](Self::slice), which check bounds and
/// alignment.
pub struct SharedRegion {
    map: MmapMut,
    _backing: Backing,
}

impl std::fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedRegion")
            .field("len", &self.map.len())
            .field("token", &self.header().token.load(Ordering::Relaxed))
            .finish()
    }
}

impl SharedRegion {
    /// Creates an anonymous region with `payload_len` usable bytes, all zero,
    /// shared with every child forked afterwards.
    pub fn anonymous(payload_len: usize) -> Result<SharedRegion, Error> {
        Self::anonymous_versioned(payload_len, 0)
    }

    /// Like [`anonymous`](Self::anonymous), stamping `version` into the header.
    pub fn anonymous_versioned(payload_len: usize, version: u32) -> Result<SharedRegion, Error> {
        let size = payload_len
            .checked_add(RegionHeader::RESERVED)
            .ok_or_else(|| Error::RegionCreate {
                size: payload_len,
                source: std::io::Error::other("size overflows usize"),
            })?;
        let create_err = |source: std::io::Error| Error::RegionCreate { size, source };
        let fd =
            nix::sys::memfd::memfd_create(c"xme-region", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| create_err(e.into()))?;
        let file = File::from(fd);
        file.set_len(size as u64).map_err(create_err)?;
        // SAFETY: the memfd is private to this process and its children; nobody
        // truncates it while mapped (the file is owned by the region and never
        // resized again), so the mapping stays valid for the region's life.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(create_err)?;
        let region = SharedRegion {
            map,
            _backing: Backing::Anonymous { _file: file },
        };
        let h = region.header();
        h.version.store(version, Ordering::Relaxed);
        h.size.store(size as u64, Ordering::Relaxed);
        h.creator_pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        h.token
            .store(crate::operator::random_u64(), Ordering::Relaxed);
        // Release: a reader that sees the magic sees the fields above.
        h.magic.store(RegionHeader::MAGIC, Ordering::Release);
        Ok(region)
    }

    /// The region's header.
    pub fn header(&self) -> &RegionHeader {
        // SAFETY: the mapping is page-aligned and at least RESERVED (64) bytes
        // long, RegionHeader is 40 bytes of atomics and valid at zero (InRegion).
        unsafe { &*(self.map.as_ptr() as *const RegionHeader) }
    }

    /// Checks the header against the expected layout version; a mismatch is an
    /// [`Error::HeaderMismatch`] naming the field.
    pub fn check_header(&self, version: u32) -> Result<(), Error> {
        let h = self.header();
        let magic = h.magic.load(Ordering::Acquire);
        if magic != RegionHeader::MAGIC {
            return Err(Error::HeaderMismatch {
                what: format!(
                    "magic is {magic:#018x}, expected {:#018x}",
                    RegionHeader::MAGIC
                ),
            });
        }
        let v = h.version.load(Ordering::Relaxed);
        if v != version {
            return Err(Error::HeaderMismatch {
                what: format!("layout version is {v}, expected {version}"),
            });
        }
        let size = h.size.load(Ordering::Relaxed);
        if size != self.map.len() as u64 {
            return Err(Error::HeaderMismatch {
                what: format!("size field is {size}, mapping is {} bytes", self.map.len()),
            });
        }
        Ok(())
    }

    /// Usable bytes after the header.
    pub fn payload_len(&self) -> usize {
        self.map.len() - RegionHeader::RESERVED
    }

    /// A reference to a `T` at `offset` bytes into the payload.
    pub fn place<T: InRegion>(&self, offset: usize) -> Result<&T, Error> {
        let ptr = self.checked(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: `checked` proved the range lies inside the mapping and is
        // aligned for T; T is InRegion, so any bytes another process left there
        // (zero or written through T's own atomics) form a valid T, and shared
        // access is sound because T is Sync across processes.
        Ok(unsafe { &*(ptr as *const T) })
    }

    /// A slice of `count` values of `T` starting `offset` bytes into the payload.
    pub fn slice<T: InRegion>(&self, offset: usize, count: usize) -> Result<&[T], Error> {
        let len = size_of::<T>()
            .checked_mul(count)
            .ok_or(Error::OutOfRegion {
                offset,
                len: usize::MAX,
                size: self.payload_len(),
                align: align_of::<T>(),
            })?;
        let ptr = self.checked(offset, len, align_of::<T>())?;
        // SAFETY: as in `place`, for `count` consecutive, in-bounds, aligned Ts.
        Ok(unsafe { std::slice::from_raw_parts(ptr as *const T, count) })
    }

    /// The address of the payload byte at `offset`, bounds-checked for `len`
    /// bytes. For byte-level protocols (arenas) that synchronise through atomics
    /// placed elsewhere in the region.
    pub fn raw(&self, offset: usize, len: usize) -> Result<*mut u8, Error> {
        self.checked(offset, len, 1)
    }

    fn checked(&self, offset: usize, len: usize, align: usize) -> Result<*mut u8, Error> {
        let size = self.payload_len();
        let err = || Error::OutOfRegion {
            offset,
            len,
            size,
            align,
        };
        let end = offset.checked_add(len).ok_or_else(err)?;
        if end > size {
            return Err(err());
        }
        let start = RegionHeader::RESERVED + offset;
        // The mapping is page-aligned, so alignment of the address equals
        // alignment of the offset from the mapping's start.
        if start % align != 0 {
            return Err(err());
        }
        // SAFETY: start + len <= map.len(), checked above.
        Ok(unsafe { self.map.as_ptr().add(start) as *mut u8 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_stamped_and_checked() {
        let r = SharedRegion::anonymous_versioned(128, 7).unwrap();
        r.check_header(7).unwrap();
        let err = r.check_header(8).unwrap_err();
        assert!(
            err.to_string().contains("layout version is 7, expected 8"),
            "{err}"
        );
        assert_eq!(
            r.header().creator_pid.load(Ordering::Relaxed),
            u64::from(std::process::id())
        );
        assert_ne!(r.header().token.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn out_of_bounds_and_misaligned_are_errors() {
        let r = SharedRegion::anonymous(64).unwrap();
        assert!(r.place::<AtomicU64>(56).is_ok());
        assert!(matches!(
            r.place::<AtomicU64>(60),
            Err(Error::OutOfRegion { .. })
        ));
        assert!(matches!(
            r.place::<AtomicU64>(4),
            Err(Error::OutOfRegion { .. })
        ));
        assert!(matches!(
            r.slice::<AtomicU32>(0, usize::MAX),
            Err(Error::OutOfRegion { .. })
        ));
        assert_eq!(r.slice::<AtomicU32>(0, 16).unwrap().len(), 16);
    }

    #[test]
    fn a_forked_child_writes_are_seen_by_the_parent() {
        let r = SharedRegion::anonymous(64).unwrap();
        let cell: &AtomicU64 = r.place(8).unwrap();
        let child = crate::process::fork_child(|| {
            cell.store(0xfeed, Ordering::SeqCst);
            0
        })
        .unwrap();
        assert!(child.wait().unwrap().is_success());
        assert_eq!(cell.load(Ordering::SeqCst), 0xfeed);
    }
}
