use std::fs::File;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicI32, AtomicI64, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

use memmap2::MmapMut;

use crate::Error;

/// Types that may live in a shared region.
///
/// [`SharedRegion::place`] hands out a `&T` over whatever bytes are at an
/// offset: zeros, bytes another process wrote there, or bytes an earlier
/// `place` of another type left behind. So a `T` must be valid for **every
/// bit pattern** of its size (like bytemuck's `AnyBitPattern`), not only for
/// zero. Integers' atomics are; `AtomicBool` is not (only 0 and 1 are valid
/// `bool`s), nor is anything holding an enum, a `char`, a reference or a
/// pointer, so none of them can be placed:
///
/// ```compile_fail
/// use std::sync::atomic::AtomicBool;
/// let region = xme_core::SharedRegion::anonymous(64).unwrap();
/// let flag: &AtomicBool = region.place(0).unwrap(); // AtomicBool is not InRegion
/// ```
///
/// ```
/// use std::sync::atomic::{AtomicU8, Ordering};
/// let region = xme_core::SharedRegion::anonymous(64).unwrap();
/// let flag: &AtomicU8 = region.place(0).unwrap(); // a flag as 0 / non-zero
/// flag.store(2, Ordering::Relaxed);
/// assert_ne!(flag.load(Ordering::Relaxed), 0);
/// ```
///
/// # Safety
/// An implementor must be valid for every bit pattern of its size (no
/// padding-sensitive or niche-carrying fields: no `bool`, enum, `char`,
/// reference, pointer or `NonZero*`), contain no pointers or references
/// (other processes map the region at other addresses), and be safe to access
/// concurrently from several processes (atomics, or data only touched under a
/// protocol built from atomics).
pub unsafe trait InRegion: Sync {}

macro_rules! in_region {
    ($($t:ty),*) => {$(
        // SAFETY: atomics of primitive integers are valid for every bit
        // pattern, hold no pointers, and are made for concurrent access.
        unsafe impl InRegion for $t {}
    )*};
}
in_region!(
    AtomicI32,
    AtomicI64,
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize
);
// SAFETY: an array of InRegion values is valid for every bit pattern,
// pointer-free and Sync element by element (arrays have no padding between
// elements).
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
    /// The creator's start time (`/proc/<pid>/stat` field 22, clock ticks
    /// since boot) for named regions, so a reader can tell the creator from
    /// a later process that reuses its pid; 0 when not recorded (anonymous
    /// regions, and regions made before it was added: the field lies in
    /// what was reserved space, so no layout moved).
    pub creator_start: AtomicU64,
}
const _: () = assert!(std::mem::size_of::<RegionHeader>() <= RegionHeader::RESERVED);

// SAFETY: made only of integer atomics (any bit pattern is valid; `_pad`
// fills the only gap); all-zero means "not initialised yet", any other
// content is judged by `check_header`.
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
    Anonymous { _map: MmapMut, file: File },
    /// A POSIX shared-memory object (`/dev/shm/<name>`), for unrelated processes.
    #[cfg(feature = "named")]
    Named {
        shmem: shared_memory::Shmem,
        name: String,
        /// Only the creating process removes the name (a forked child that drops
        /// its copy must not).
        creator: u32,
    },
}

/// A region of memory shared between processes.
///
/// Two kinds, one type:
/// - **anonymous** ([`anonymous`](Self::anonymous)): shared by a process and the
///   children it forks after creating it;
/// - **named** (`create_named` / `open_named`, with the default `named`
///   feature): a `/dev/shm` object unrelated processes attach by name,
///   created with mode 0600 and removed when its creator drops it. A region
///   whose creator died is reclaimed by the next `create_named` of that name
///   and reported by `open_named`.
///
/// Every region starts with a [`RegionHeader`] (magic, layout version, size,
/// creator pid, random token); callers address the payload after it by offset,
/// never by pointer, through [`place`](Self::place) and [`slice`](Self::slice),
/// which check bounds and alignment.
pub struct SharedRegion {
    base: *mut u8,
    len: usize,
    backing: Backing,
}

// SAFETY: the region is plain shared memory that every process and thread
// reaches only through `InRegion` types (atomics) or raw pointers whose users
// synchronise through atomics; `base`/`len` never change after construction,
// and the backing objects are only touched again in `Drop`, which needs
// exclusive ownership.
unsafe impl Send for SharedRegion {}
// SAFETY: as above: shared access hands out only `&T` with `T: InRegion + Sync`.
unsafe impl Sync for SharedRegion {}

impl std::fmt::Debug for SharedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("SharedRegion");
        d.field("len", &self.len);
        if let Some(name) = self.name() {
            d.field("name", &name);
        }
        d.field("token", &self.header().token.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        #[cfg(feature = "named")]
        if let Backing::Named { shmem, creator, .. } = &mut self.backing
            && *creator != crate::process::current_pid()
        {
            shmem.set_owner(false);
        }
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
        let size = total_size(payload_len)?;
        let create_err = |source: std::io::Error| Error::RegionCreate { size, source };
        let fd = nix::sys::memfd::memfd_create(
            c"xme-region",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC | nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| create_err(e.into()))?;
        let file = File::from(fd);
        file.set_len(size as u64).map_err(create_err)?;
        // Sealed against resizing: a process that holds the descriptor (a
        // child, or one it was passed to) cannot shrink the file under a
        // mapping, which would turn reads of the vanished pages into SIGBUS.
        nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_ADD_SEALS(
                nix::fcntl::SealFlag::F_SEAL_SHRINK | nix::fcntl::SealFlag::F_SEAL_GROW,
            ),
        )
        .map_err(|e| create_err(e.into()))?;
        // SAFETY: the memfd is shared only by this process, its children and
        // processes it hands the descriptor to; its size is sealed (above),
        // so nobody can truncate it while mapped and the mapping stays valid
        // for the region's life.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(create_err)?;
        let region = SharedRegion {
            base: map.as_mut_ptr(),
            len: map.len(),
            backing: Backing::Anonymous { _map: map, file },
        };
        region.stamp(version);
        Ok(region)
    }

    /// The memfd behind an anonymous region (`None` for a named one), to
    /// hand to a process that is not a fork of this one (for example over
    /// `exec`, or with `SCM_RIGHTS`), which maps it with
    /// [`from_memfd`](Self::from_memfd).
    pub fn memfd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        match &self.backing {
            Backing::Anonymous { file, .. } => Some(file.as_fd()),
            #[cfg(feature = "named")]
            Backing::Named { .. } => None,
        }
    }

    /// Maps the memfd of an anonymous region made by another process (see
    /// [`memfd`](Self::memfd)) and checks its header against `version`.
    ///
    /// ```
    /// use std::os::fd::AsFd;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use xme_core::SharedRegion;
    ///
    /// let region = SharedRegion::anonymous_versioned(64, 7).unwrap();
    /// let fd = region.memfd().unwrap().try_clone_to_owned().unwrap();
    /// let again = SharedRegion::from_memfd(fd, 7).unwrap();
    /// let word: &AtomicU64 = region.place(0).unwrap();
    /// word.store(5, Ordering::Relaxed);
    /// assert_eq!(again.place::<AtomicU64>(0).unwrap().load(Ordering::Relaxed), 5);
    /// assert!(SharedRegion::from_memfd(region.memfd().unwrap().try_clone_to_owned().unwrap(), 8).is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::RegionCreate`] when the descriptor cannot be mapped (not a
    /// file, or too small for a header); [`Error::HeaderMismatch`] when the
    /// header is not an xme region of `version`.
    pub fn from_memfd(fd: std::os::fd::OwnedFd, version: u32) -> Result<SharedRegion, Error> {
        let file = File::from(fd);
        let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let create_err = |source: std::io::Error| Error::RegionCreate { size, source };
        let sealed = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GET_SEALS)
            .map(nix::fcntl::SealFlag::from_bits_truncate)
            .is_ok_and(|s| s.contains(nix::fcntl::SealFlag::F_SEAL_SHRINK));
        if !sealed {
            return Err(create_err(std::io::Error::other(
                "the descriptor is not a memfd sealed against shrinking",
            )));
        }
        if size < RegionHeader::RESERVED {
            return Err(create_err(std::io::Error::other(format!(
                "the descriptor holds {size} bytes, too few for a region header"
            ))));
        }
        // SAFETY: as in `anonymous_versioned`: the memfd's size is sealed
        // (checked below before trusting the mapping), so nobody resizes it
        // while mapped; what the bytes hold is judged by `check_header` and,
        // after it, only read through `InRegion` types.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(create_err)?;
        let region = SharedRegion {
            base: map.as_mut_ptr(),
            len: map.len(),
            backing: Backing::Anonymous { _map: map, file },
        };
        region.check_header(version)?;
        Ok(region)
    }

    #[cfg(feature = "named")]
    /// Creates a named region `name` (`/dev/shm/<name>`, mode 0600) with
    /// `payload_len` zeroed bytes, removed when this process drops it.
    ///
    /// If a region of that name exists and its creator is dead, it is removed
    /// and created anew; if its creator lives, [`Error::RegionExists`].
    pub fn create_named(
        name: &str,
        payload_len: usize,
        version: u32,
    ) -> Result<SharedRegion, Error> {
        let os_id = os_id(name)?;
        let size = total_size(payload_len)?;
        for _ in 0..3 {
            match shared_memory::ShmemConf::new()
                .os_id(&os_id)
                .size(size)
                .create()
            {
                Ok(shmem) => {
                    let region = SharedRegion::named(shmem, name)?;
                    // Before the stamp's Release store of the magic, so a
                    // reader that sees the magic sees it.
                    region.header().creator_start.store(
                        crate::process::start_time(std::process::id() as i32).unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    region.stamp(version);
                    return Ok(region);
                }
                Err(shared_memory::ShmemError::MappingIdExists) => {
                    match SharedRegion::open_existing(name, &os_id) {
                        Ok(old) => {
                            let pid = old.header().creator_pid.load(Ordering::Acquire) as u32;
                            if pid != 0 && crate::process::is_alive(pid as i32) {
                                return Err(Error::RegionExists {
                                    name: name.to_string(),
                                    creator_pid: pid,
                                });
                            }
                            // Its creator is gone: reclaim the name.
                            drop(old);
                            SharedRegion::remove_named(name)?;
                        }
                        Err(_) => SharedRegion::remove_named(name)?,
                    }
                }
                Err(e) => {
                    return Err(Error::RegionCreate {
                        size,
                        source: std::io::Error::other(e.to_string()),
                    });
                }
            }
        }
        Err(Error::RegionExists {
            name: name.to_string(),
            creator_pid: 0,
        })
    }

    #[cfg(feature = "named")]
    /// Attaches to the named region `name` made by another process, checking
    /// its header against `version`. A region whose creator died is reported
    /// as [`Error::StaleRegion`] (remove it with [`remove_named`](Self::remove_named)).
    pub fn open_named(name: &str, version: u32) -> Result<SharedRegion, Error> {
        let os_id = os_id(name)?;
        let region = SharedRegion::open_existing(name, &os_id)?;
        // A creator may still be initialising the header: give it a moment.
        let t = std::time::Instant::now();
        while region.header().magic.load(Ordering::Acquire) == 0
            && t.elapsed() < std::time::Duration::from_millis(200)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        region.check_header(version)?;
        let pid = region.header().creator_pid.load(Ordering::Acquire) as u32;
        if !crate::process::is_alive(pid as i32) {
            return Err(Error::StaleRegion {
                name: name.to_string(),
                creator_pid: pid,
            });
        }
        Ok(region)
    }

    #[cfg(feature = "named")]
    /// Removes the name `name` from `/dev/shm` (mappings stay valid until unmapped).
    pub fn remove_named(name: &str) -> Result<(), Error> {
        let os_id = os_id(name)?;
        match nix::sys::mman::shm_unlink(os_id.as_str()) {
            Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
            Err(e) => Err(Error::RegionOpen {
                name: name.to_string(),
                reason: format!("could not remove it: {e}"),
            }),
        }
    }

    #[cfg(feature = "named")]
    fn open_existing(name: &str, os_id: &str) -> Result<SharedRegion, Error> {
        let shmem = shared_memory::ShmemConf::new()
            .os_id(os_id)
            .open()
            .map_err(|e| Error::RegionOpen {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        let mut region = SharedRegion::named(shmem, name)?;
        if let Backing::Named { creator, .. } = &mut region.backing {
            *creator = 0; // not ours to remove
        }
        Ok(region)
    }

    #[cfg(feature = "named")]
    fn named(shmem: shared_memory::Shmem, name: &str) -> Result<SharedRegion, Error> {
        if shmem.len() < RegionHeader::RESERVED {
            return Err(Error::HeaderMismatch {
                what: format!(
                    "the region is {} bytes, too small for a header",
                    shmem.len()
                ),
            });
        }
        Ok(SharedRegion {
            base: shmem.as_ptr(),
            len: shmem.len(),
            backing: Backing::Named {
                shmem,
                name: name.to_string(),
                creator: crate::process::current_pid(),
            },
        })
    }

    /// The name of a named region.
    pub fn name(&self) -> Option<&str> {
        match &self.backing {
            #[cfg(feature = "named")]
            Backing::Named { name, .. } => Some(name),
            Backing::Anonymous { .. } => None,
        }
    }

    fn stamp(&self, version: u32) {
        let h = self.header();
        h.version.store(version, Ordering::Relaxed);
        h.size.store(self.len as u64, Ordering::Relaxed);
        h.creator_pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        h.token
            .store(crate::operator::random_u64(), Ordering::Relaxed);
        // Release: a reader that sees the magic sees the fields above.
        h.magic.store(RegionHeader::MAGIC, Ordering::Release);
    }

    /// The region's header.
    pub fn header(&self) -> &RegionHeader {
        // SAFETY: the mapping is page-aligned and at least RESERVED (64) bytes
        // long (checked at construction); RegionHeader is 48 bytes of integer
        // atomics, valid for every bit pattern (InRegion); the reference
        // borrows `self`, so it cannot outlive the mapping.
        unsafe { &*(self.base as *const RegionHeader) }
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
        if size != self.len as u64 {
            return Err(Error::HeaderMismatch {
                what: format!("size field is {size}, mapping is {} bytes", self.len),
            });
        }
        Ok(())
    }

    /// Usable bytes after the header.
    pub fn payload_len(&self) -> usize {
        self.len - RegionHeader::RESERVED
    }

    /// A reference to a `T` at `offset` bytes into the payload.
    pub fn place<T: InRegion>(&self, offset: usize) -> Result<&T, Error> {
        let ptr = self.checked(offset, size_of::<T>(), align_of::<T>())?;
        // SAFETY: `checked` proved the range lies inside the mapping and is
        // aligned for T; T is InRegion, so it is valid for every bit pattern
        // and whatever bytes are there (zero, another process's writes, an
        // earlier `place` of another type) form a valid T; shared access is
        // sound because T is Sync across processes. The reference borrows
        // `self`, so it cannot outlive the mapping.
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

    /// Like [`place`](Self::place), but the reference keeps the region alive
    /// itself: a [`Mapped`] holds a clone of the `Arc`, so a struct can keep
    /// it beside other fields without borrowing the region.
    pub fn place_owned<T: InRegion>(self: &Arc<Self>, offset: usize) -> Result<Mapped<T>, Error> {
        let ptr = NonNull::from(self.place::<T>(offset)?);
        Ok(Mapped {
            ptr,
            _region: self.clone(),
        })
    }

    /// Like [`slice`](Self::slice), keeping the region alive (see
    /// [`place_owned`](Self::place_owned)).
    pub fn slice_owned<T: InRegion>(
        self: &Arc<Self>,
        offset: usize,
        count: usize,
    ) -> Result<Mapped<[T]>, Error> {
        let ptr = NonNull::from(self.slice::<T>(offset, count)?);
        Ok(Mapped {
            ptr,
            _region: self.clone(),
        })
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
        if !start.is_multiple_of(align) {
            return Err(err());
        }
        // SAFETY: start + len <= self.len, checked above.
        Ok(unsafe { self.base.add(start) })
    }
}

/// A `T` (or `[T]`) in a shared region, holding the region alive: it
/// dereferences to `&T` for as long as it lives, and no longer (the borrow
/// is tied to the `Mapped`, never `'static`). Made by
/// [`SharedRegion::place_owned`] and [`SharedRegion::slice_owned`].
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
/// use xme_core::SharedRegion;
///
/// let region = Arc::new(SharedRegion::anonymous(64).unwrap());
/// let words = region.slice_owned::<AtomicU64>(0, 8).unwrap();
/// drop(region); // `words` keeps the mapping alive
/// words[3].store(7, Ordering::Relaxed);
/// assert_eq!(words[3].load(Ordering::Relaxed), 7);
/// ```
///
/// A borrow never outlives the `Mapped` it came from:
///
/// ```compile_fail
/// use std::sync::{Arc, atomic::AtomicU64};
/// let region = Arc::new(xme_core::SharedRegion::anonymous(64).unwrap());
/// let words = region.slice_owned::<AtomicU64>(0, 8).unwrap();
/// let escaped: &'static [AtomicU64] = &words; // does not compile
/// ```
pub struct Mapped<T: ?Sized> {
    ptr: NonNull<T>,
    _region: Arc<SharedRegion>,
}

impl<T: ?Sized> Clone for Mapped<T> {
    fn clone(&self) -> Self {
        Mapped {
            ptr: self.ptr,
            _region: self._region.clone(),
        }
    }
}

impl<T: ?Sized> std::ops::Deref for Mapped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: `ptr` came from `place`/`slice` of the region held in
        // `_region` (bounds and alignment checked, InRegion contents valid
        // for any bytes); the Arc keeps the mapping alive at least as long
        // as `self`, and the returned borrow cannot outlive `self`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized> std::fmt::Debug for Mapped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("region", &self._region)
            .finish_non_exhaustive()
    }
}

// SAFETY: a Mapped only hands out `&T`, and T is InRegion (so Sync: shared
// access from any thread is sound); the Arc<SharedRegion> is Send + Sync.
unsafe impl<T: ?Sized + Sync> Send for Mapped<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Sync> Sync for Mapped<T> {}

/// Views the start of `words` (words of a region, say) as a typed layout
/// `T`: `None` if `T` is larger than the slice or needs more than 8-byte
/// alignment. Lets a protocol over a slice of words name its fields with a
/// `#[repr(C)]` struct instead of index constants.
///
/// ```
/// use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
/// #[repr(C)]
/// struct Pair { a: AtomicU32, b: AtomicU32 }
/// // SAFETY: two u32 atomics, no padding, no pointers.
/// unsafe impl xme_core::InRegion for Pair {}
///
/// let words = [AtomicU64::new(0), AtomicU64::new(0)];
/// let pair: &Pair = xme_core::view(&words).unwrap();
/// pair.b.store(1, Ordering::Relaxed);
/// assert_eq!(words[0].load(Ordering::Relaxed), 1 << 32);
/// assert!(xme_core::view::<[AtomicU64; 3]>(&words).is_none());
/// ```
pub fn view<T: InRegion>(words: &[AtomicU64]) -> Option<&T> {
    if size_of::<T>() > size_of_val(words) || align_of::<T>() > align_of::<AtomicU64>() {
        return None;
    }
    // SAFETY: the bytes of `words` are valid for reads and (through their
    // atomics' interior mutability) shared writes while `words` is borrowed,
    // which the returned reference is; the size and alignment were checked
    // above; T is InRegion, so every bit pattern is a valid T and its fields
    // are made for concurrent access (as in `SharedRegion::place`).
    Some(unsafe { &*(words.as_ptr() as *const T) })
}

fn total_size(payload_len: usize) -> Result<usize, Error> {
    payload_len
        .checked_add(RegionHeader::RESERVED)
        .ok_or_else(|| Error::RegionCreate {
            size: payload_len,
            source: std::io::Error::other("size overflows usize"),
        })
}

/// `/name`, after checking the name is usable in /dev/shm.
pub(crate) fn os_id(name: &str) -> Result<String, Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if ok {
        Ok(format!("/{name}"))
    } else {
        Err(Error::RegionOpen {
            name: name.to_string(),
            reason: "a region name is 1 to 200 characters of A-Z, a-z, 0-9, '-', '_', '.' (not starting with '.')".into(),
        })
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
