//! What a worker runs for a task, and how its address crosses `exec`.
//!
//! A task is a zero-sized `fn` item or capture-free closure; its
//! *trampoline* (monomorphised per task type) decodes the arguments, calls
//! it and encodes the result. The zygote is a fresh `exec` of the running
//! program, mapped at another address (ASLR), so a trampoline crosses as its
//! offset from [`anchor`], a function of this crate: both lie in the same
//! executable, whose layout is the same in every process that runs it.

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_core::{CodecError, PanicReport, process};

/// The call returned; the bytes are its postcard result.
pub(crate) const OK: u8 = 0;
/// The call panicked; the bytes are a postcard `PanicReport`.
pub(crate) const PANICKED: u8 = 1;
/// The result could not be encoded; the bytes are the error's text.
pub(crate) const ENCODE: u8 = 2;
/// The arguments could not be decoded; the bytes are the error's text.
pub(crate) const DECODE: u8 = 3;
/// The result was larger than the pool accepts; the bytes are the text.
pub(crate) const TOO_LARGE: u8 = 4;

/// Decodes `args`, calls the task, writes its result (or failure) to `out`
/// and says which of the statuses above it is.
pub(crate) type Trampoline = fn(args: &[u8], out: &mut Vec<u8>) -> u8;

/// The trampoline of task type `F` (zero-sized, asserted at compile time).
pub(crate) fn trampoline<F, A, R>(args: &[u8], out: &mut Vec<u8>) -> u8
where
    F: Fn(A) -> R + Copy + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    const { assert!(std::mem::size_of::<F>() == 0) };
    // SAFETY: `F` is zero-sized (asserted above): reading one reads no
    // bytes, so a dangling, aligned pointer is valid for it. `F` is `Copy`:
    // making one is what copying the value the caller passed to the pool
    // would do, and the caller had such a value, so the type is inhabited.
    let f: F = unsafe { std::ptr::NonNull::<F>::dangling().as_ptr().read() };
    // A `Deserialize` or `Serialize` impl may panic too: that is a panic of
    // the call, not the end of its worker.
    let run = process::catch_panic(|| {
        let arg: A = match postcard::from_bytes(args) {
            Ok(arg) => arg,
            Err(e) => {
                out.extend_from_slice(CodecError::decoding(e).to_string().as_bytes());
                return DECODE;
            }
        };
        let r = f(arg);
        match encode_into(&r, out) {
            Ok(()) => OK,
            Err(e) => {
                out.clear();
                out.extend_from_slice(CodecError::encoding(e, &r).to_string().as_bytes());
                ENCODE
            }
        }
    });
    match run {
        Ok(status) => status,
        Err(panic) => {
            out.clear();
            let _ = encode_into(&panic, out);
            PANICKED
        }
    }
}

pub(crate) use xme_core::result_frame::encode_into;

/// The panic report of a `PANICKED` result.
pub(crate) fn panic_report(bytes: &[u8]) -> PanicReport {
    postcard::from_bytes(bytes).unwrap_or_else(|_| PanicReport {
        message: "a panic whose report could not be read".into(),
        location: None,
    })
}

/// The function every entry offset is measured from.
#[inline(never)]
pub(crate) fn anchor() -> usize {
    anchor as *const () as usize
}

/// The offset of `t` from [`anchor`].
pub(crate) fn offset_of(t: Trampoline) -> u64 {
    (t as usize).wrapping_sub(anchor()) as u64
}

/// The trampoline at `offset` from [`anchor`].
///
/// # Safety
/// `offset` must come from [`offset_of`] in a process running the same
/// executable (the parent, through the worker's private socket).
pub(crate) unsafe fn at_offset(offset: u64) -> Trampoline {
    let address = anchor().wrapping_add(offset as usize);
    // SAFETY: by the contract, `address` is where `offset_of`'s trampoline
    // lies in this process: the same function of the same executable, at the
    // same distance from `anchor`.
    unsafe { std::mem::transmute::<usize, Trampoline>(address) }
}

/// The address range of the running executable's mappings, and whether
/// [`anchor`] lies in it (it does not when this crate was loaded as part of a
/// shared library, for example a Python extension).
pub(crate) fn executable_range() -> Result<std::ops::Range<usize>, String> {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("cannot read /proc/self/exe: {e}"))?;
    let exe = exe.to_string_lossy().into_owned();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
    let mut range: Option<std::ops::Range<usize>> = None;
    for line in maps.lines() {
        // "start-end perms offset dev inode   path"
        let mut fields = line.splitn(6, ' ');
        let (Some(span), Some(path)) = (fields.next(), fields.nth(4)) else {
            continue;
        };
        if path.trim_start() != exe {
            continue;
        }
        let Some((lo, hi)) = span.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        range = Some(match range {
            Some(r) => r.start.min(lo)..r.end.max(hi),
            None => lo..hi,
        });
    }
    let range = range.ok_or_else(|| format!("no mapping of {exe} in /proc/self/maps"))?;
    if !range.contains(&anchor()) {
        return Err(format!(
            "xme-exec is not part of the running executable ({exe}): it was loaded as a shared library"
        ));
    }
    Ok(range)
}
