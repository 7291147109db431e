//! Raw descriptor I/O for paths that must not take locks (forked children).

use std::os::fd::BorrowedFd;

/// Writes all of `bytes` to `fd` with `write(2)`, retrying on `EINTR`: one call
/// for a line that fits a pipe buffer or any write to a regular file, so
/// concurrent writers on an `O_APPEND` file or a pipe never tear each other.
pub fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), nix::Error> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
