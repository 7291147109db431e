"""XME.MPI (seed section 3) is not in xme's Python face yet; its place is
kept here (``from XME.MPI import MPI``)."""

raise ImportError(
    "XME.MPI (seed section 3) is not available in xme's Python face yet; only the "
    "standard interface (XME.XME, seed section 1) is. The Rust crate xme-mpi has it."
)
