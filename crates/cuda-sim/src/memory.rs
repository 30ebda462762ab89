//! Device memory: host bytes behind an allocation table.
//!
//! Device addresses are handed out upward from [`GLOBAL_BASE`] and never reused, with a gap
//! after each allocation, so a read past an end or of a freed allocation always lands in no
//! live allocation and is reported, never silently served by a neighbour (a GPU would serve
//! it). Shared and local memory have generic-address windows of their own.

use std::collections::BTreeMap;

/// Where device allocations start (GPU pointers look like this too).
pub const GLOBAL_BASE: u64 = 0x7f00_0000_0000;
/// Generic addresses of the running block's shared memory.
pub const SHARED_WINDOW: u64 = 0x1000_0000_0000;
/// Generic addresses of the running thread's local memory.
pub const LOCAL_WINDOW: u64 = 0x2000_0000_0000;
const WINDOW_SIZE: u64 = 1 << 32;
/// Space left unallocated after each allocation.
const GAP: u64 = 4096;

#[derive(Debug)]
pub struct Allocation {
    pub id: u64,
    pub base: u64,
    pub size: u64,
    /// `None` once freed: the record stays to name the allocation in a use-after-free error.
    pub data: Option<Vec<u8>>,
}

/// Why a global access failed, for the error line.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Outside every allocation: how far past the end of the nearest allocation below, and
    /// that allocation (id, base, size), if there is one.
    Unmapped {
        nearest: Option<(u64, u64, u64, u64)>,
    },
    /// Inside or overlapping the end of an allocation.
    PastEnd { id: u64, base: u64, size: u64 },
    /// An allocation already freed.
    Freed { id: u64, base: u64, size: u64 },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Unmapped {
                nearest: Some((past, id, base, size)),
            } => write!(
                f,
                "in no allocation ({past} bytes past the end of allocation #{id} at {base:#x}, {size} bytes)"
            ),
            Fault::Unmapped { nearest: None } => write!(f, "in no allocation"),
            Fault::PastEnd { id, base, size } => {
                write!(
                    f,
                    "past the end of allocation #{id} at {base:#x} ({size} bytes)"
                )
            }
            Fault::Freed { id, base, size } => {
                write!(
                    f,
                    "in allocation #{id} at {base:#x} ({size} bytes), already freed"
                )
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct GlobalMemory {
    allocations: BTreeMap<u64, Allocation>,
    next: u64,
    next_id: u64,
}

impl GlobalMemory {
    pub fn new() -> Self {
        GlobalMemory {
            allocations: BTreeMap::new(),
            next: GLOBAL_BASE,
            next_id: 1,
        }
    }

    /// A zeroed allocation of `size` bytes, 256-byte aligned as cudaMalloc's are.
    pub fn alloc(&mut self, size: u64) -> u64 {
        let base = self.next;
        self.next = (base + size.max(1) + GAP).next_multiple_of(256);
        let id = self.next_id;
        self.next_id += 1;
        self.allocations.insert(
            base,
            Allocation {
                id,
                base,
                size,
                data: Some(vec![0; size as usize]),
            },
        );
        base
    }

    /// Frees the allocation starting at `base`; false if there is none live.
    pub fn free(&mut self, base: u64) -> bool {
        match self.allocations.get_mut(&base) {
            Some(a) if a.data.is_some() => {
                a.data = None;
                true
            }
            _ => false,
        }
    }

    pub fn live_bytes(&self) -> u64 {
        self.allocations
            .values()
            .filter(|a| a.data.is_some())
            .map(|a| a.size)
            .sum()
    }

    fn find(&self, addr: u64) -> Option<&Allocation> {
        self.allocations.range(..=addr).next_back().map(|(_, a)| a)
    }

    /// The live allocation holding `[addr, addr + len)`, and the offset of `addr` in it.
    fn locate(&self, addr: u64, len: u64) -> Result<(u64, u64), Fault> {
        match self.find(addr) {
            Some(a) if addr < a.base + a.size.max(1) => {
                if a.data.is_none() {
                    Err(Fault::Freed {
                        id: a.id,
                        base: a.base,
                        size: a.size,
                    })
                } else if addr + len > a.base + a.size {
                    Err(Fault::PastEnd {
                        id: a.id,
                        base: a.base,
                        size: a.size,
                    })
                } else {
                    Ok((a.base, addr - a.base))
                }
            }
            Some(a) => Err(Fault::Unmapped {
                nearest: Some((addr - (a.base + a.size), a.id, a.base, a.size)),
            }),
            None => Err(Fault::Unmapped { nearest: None }),
        }
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<(), Fault> {
        let (base, off) = self.locate(addr, out.len() as u64)?;
        let data = self.allocations[&base]
            .data
            .as_ref()
            .expect("located allocations are live");
        out.copy_from_slice(&data[off as usize..off as usize + out.len()]);
        Ok(())
    }

    pub fn write(&mut self, addr: u64, bytes: &[u8]) -> Result<(), Fault> {
        let (base, off) = self.locate(addr, bytes.len() as u64)?;
        let alloc = self
            .allocations
            .get_mut(&base)
            .expect("located allocations exist");
        let data = alloc.data.as_mut().expect("located allocations are live");
        data[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

/// Which window a generic address falls in.
pub enum Window {
    Global(u64),
    Shared(u64),
    Local(u64),
}

pub fn window(addr: u64) -> Window {
    if (SHARED_WINDOW..SHARED_WINDOW + WINDOW_SIZE).contains(&addr) {
        Window::Shared(addr - SHARED_WINDOW)
    } else if (LOCAL_WINDOW..LOCAL_WINDOW + WINDOW_SIZE).contains(&addr) {
        Window::Local(addr - LOCAL_WINDOW)
    } else {
        Window::Global(addr)
    }
}
