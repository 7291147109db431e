"""XME.Manager (seed section 2: XMEMBuilder, Guard, HeartJump, Object,
Security, Monitor) is not in xme's Python face yet.

The package keeps its place: ``from XME.Manager import XMEMBuilder`` and
``from XME.Manager.Security import *`` will import from here once the
Manager, the locks and the Monitor are built on xme-shm, xme-security and
xme-monitor. Until then, importing it says so instead of failing later.
"""

raise ImportError(
    "XME.Manager (seed section 2: XMEMBuilder, Guard, HeartJump, Object, Security, "
    "Monitor) is not available in xme's Python face yet; only the standard interface "
    "(XME.XME, seed section 1) is. The Rust crates xme-shm, xme-security and "
    "xme-monitor have them."
)
