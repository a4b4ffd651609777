//! Unaligned guest accesses, split the way QEMU's memory core splits them.
//!
//! The device's registers take naturally aligned accesses of 1, 2 or 4 bytes
//! (QEMU's `i6300esb_ops`: `.valid` sizes 1 to 4, no unaligned flag). Under KVM,
//! QEMU hands every MMIO exit to `address_space_rw`, whose loop
//! (`flatview_read_continue`/`flatview_write_continue` in QEMU 7.2's
//! `softmmu/physmem.c`) cuts an access the region cannot take into pieces before
//! the device sees any: each piece is as long as what is left, but at most 4
//! bytes (the region's largest access), at most the alignment of its address,
//! and rounded down to a power of two (`memory_access_size`). So a 2-byte write
//! at BAR0+0x0B arrives as byte writes at 0x0B and 0x0C, and a 4-byte read at
//! BAR0+0x0A as 2-byte reads at 0x0A and 0x0C, assembled little-endian.
//!
//! [`split_access`] computes the pieces; [`crate::I6300Esb::bar0_read_split`],
//! [`crate::I6300Esb::bar0_write_split`] and their [`crate::Watchdog`]
//! counterparts deliver them, so a KVM-based VMM passes its MMIO exits through
//! unchanged. An aligned access of 1, 2 or 4 bytes is a single piece, itself.
//! (Under TCG, QEMU rejects an unaligned access outright instead; the plain
//! `bar0_read`/`bar0_write` keep that behaviour.)
//!
//! The same rule, with the same 4-byte limit, is how QEMU's PC host bridges
//! split an access to the 4-byte data port 0xCFC-0xCFF: pass `port - 0xCFC` as
//! the offset; pieces starting at 4 or more belong to port 0xD00 and up, not to
//! configuration space.
//!
//! ```
//! use i6300esb::{split_access, I6300Esb, ManualClock, WatchdogAction};
//!
//! assert_eq!(split_access(0x0b, 2).collect::<Vec<_>>(), [(0x0b, 1), (0x0c, 1)]);
//! assert_eq!(split_access(0x0a, 4).collect::<Vec<_>>(), [(0x0a, 2), (0x0c, 2)]);
//! assert_eq!(split_access(0x04, 4).collect::<Vec<_>>(), [(0x04, 4)]);
//!
//! // A 2-byte write of 0x8000 at 0x0B puts 0x80 at 0x0C: the first unlock step.
//! let mut dev = I6300Esb::new(WatchdogAction::Reset, ManualClock::new(0));
//! dev.bar0_write_split(0x0b, &0x8000u16.to_le_bytes());
//! assert_eq!(dev.state().watchdog.unlock_state, 1);
//! ```

use crate::clock::Clock;
use crate::device::I6300Esb;
use crate::events::WatchdogEvents;
use crate::watchdog::Watchdog;

/// The largest piece the device's registers take (QEMU's `.valid.max_access_size`).
pub const MAX_PIECE: usize = 4;

/// The longest access the `*_split` methods take: a KVM MMIO exit carries at
/// most 8 bytes. Longer ones are refused and counted as ignored.
pub const MAX_SPLIT_ACCESS: usize = 8;

/// Whether an access is a single naturally aligned piece of 1, 2 or 4 bytes:
/// [`split_access`] would return it unchanged (the common case, handled
/// without the iterator).
#[inline]
pub(crate) fn one_piece(offset: u64, len: usize) -> bool {
    // `len` is a power of two here, so the alignment test is a mask, not a
    // division (a `div` costs tens of cycles on every guest access).
    matches!(len, 1 | 2 | 4) && offset & (len as u64 - 1) == 0
}

/// The pieces of an access of `len` bytes at `offset`, in address order, as
/// `(offset, len)` pairs; see the [module docs](self) for the rule.
///
/// The pieces cover `offset..offset + len` exactly, without gaps or overlaps;
/// each is 1, 2 or 4 bytes long and naturally aligned. A `len` of 0 gives no
/// piece; the pieces stop where an offset would pass `u64::MAX`.
pub fn split_access(offset: u64, len: usize) -> SplitAccess {
    SplitAccess {
        offset: Some(offset),
        left: len,
    }
}

/// The iterator [`split_access`] returns.
#[derive(Clone, Debug)]
pub struct SplitAccess {
    /// The next piece's offset; `None` once past `u64::MAX`.
    offset: Option<u64>,
    left: usize,
}

impl Iterator for SplitAccess {
    type Item = (u64, usize);

    fn next(&mut self) -> Option<(u64, usize)> {
        let offset = self.offset?;
        if self.left == 0 {
            return None;
        }
        let mut max = MAX_PIECE;
        // The alignment of the address bounds the piece (offset 0 is aligned to
        // everything). `offset & offset.wrapping_neg()` is its lowest set bit.
        let align = offset & offset.wrapping_neg();
        if align != 0 && align < max as u64 {
            max = align as usize;
        }
        let len = prev_power_of_two(self.left.min(max));
        self.left -= len;
        self.offset = offset.checked_add(len as u64);
        Some((offset, len))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match (self.offset, self.left) {
            (None, _) | (_, 0) => (0, Some(0)),
            // At least one piece per 4 bytes; at most one per byte.
            (Some(_), left) => (left.div_ceil(MAX_PIECE), Some(left)),
        }
    }
}

/// The largest power of two not above `n` (`n` is 1 to 4 here).
fn prev_power_of_two(n: usize) -> usize {
    debug_assert!(n > 0);
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// Where piece `(at, len)` of an access starting at `start` sits in its buffer.
fn piece_range(start: u64, at: u64, len: usize) -> std::ops::Range<usize> {
    // Pieces start at or after `start` and lie within the buffer by construction.
    let i = (at - start) as usize;
    i..i + len
}

impl<E: WatchdogEvents> Watchdog<E> {
    /// [`Watchdog::mmio_read`] for an access of any alignment, delivered in the
    /// pieces [`split_access`] gives and assembled little-endian into `data`.
    /// Pieces past the 16-byte window read 0 and are counted, as
    /// `mmio_read` does; an access longer than [`MAX_SPLIT_ACCESS`] reads 0 and
    /// is counted once.
    pub fn mmio_read_split(&mut self, now_ns: u64, offset: u64, data: &mut [u8]) {
        if one_piece(offset, data.len()) {
            return self.mmio_read(now_ns, offset, data);
        }
        data.fill(0);
        if data.len() > MAX_SPLIT_ACCESS {
            self.events().ignored_mmio_access();
            return;
        }
        for (at, len) in split_access(offset, data.len()) {
            self.mmio_read(now_ns, at, &mut data[piece_range(offset, at, len)]);
        }
    }

    /// [`Watchdog::mmio_write`] for an access of any alignment, delivered in the
    /// pieces [`split_access`] gives, in address order. An access longer than
    /// [`MAX_SPLIT_ACCESS`] is dropped and counted once.
    pub fn mmio_write_split(&mut self, now_ns: u64, offset: u64, data: &[u8]) {
        if one_piece(offset, data.len()) {
            return self.mmio_write(now_ns, offset, data);
        }
        if data.len() > MAX_SPLIT_ACCESS {
            self.events().ignored_mmio_access();
            return;
        }
        for (at, len) in split_access(offset, data.len()) {
            self.mmio_write(now_ns, at, &data[piece_range(offset, at, len)]);
        }
    }
}

impl<C: Clock, E: WatchdogEvents> I6300Esb<C, E> {
    /// Read BAR0 at `offset` with an access of any alignment and up to 8 bytes,
    /// as QEMU on KVM delivers it: see [`Watchdog::mmio_read_split`]. An aligned
    /// read of 1, 2 or 4 bytes is exactly [`Self::bar0_read`].
    pub fn bar0_read_split(&mut self, offset: u64, data: &mut [u8]) {
        if one_piece(offset, data.len()) {
            return self.bar0_read(offset, data);
        }
        data.fill(0);
        if data.len() > MAX_SPLIT_ACCESS {
            self.events().ignored_mmio_access();
            return;
        }
        for (at, len) in split_access(offset, data.len()) {
            self.bar0_read(at, &mut data[piece_range(offset, at, len)]);
        }
    }

    /// Write BAR0 at `offset` with an access of any alignment and up to 8 bytes,
    /// as QEMU on KVM delivers it: see [`Watchdog::mmio_write_split`]. An aligned
    /// write of 1, 2 or 4 bytes is exactly [`Self::bar0_write`].
    pub fn bar0_write_split(&mut self, offset: u64, data: &[u8]) {
        if one_piece(offset, data.len()) {
            return self.bar0_write(offset, data);
        }
        if data.len() > MAX_SPLIT_ACCESS {
            self.events().ignored_mmio_access();
            return;
        }
        for (at, len) in split_access(offset, data.len()) {
            self.bar0_write(at, &data[piece_range(offset, at, len)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(offset: u64, len: usize) -> Vec<(u64, usize)> {
        split_access(offset, len).collect()
    }

    /// An access `(offset, len)` and the pieces it splits into.
    type Case = (u64, usize, &'static [(u64, usize)]);

    #[test]
    fn the_one_piece_shortcut_agrees_with_the_split() {
        for offset in 0..64u64 {
            for len in 0..=MAX_SPLIT_ACCESS {
                let whole = pieces(offset, len) == [(offset, len)];
                assert_eq!(
                    one_piece(offset, len),
                    whole,
                    "offset {offset:#x} len {len}"
                );
            }
        }
    }

    #[test]
    fn table_of_splits() {
        let table: &[Case] = &[
            (0x0b, 2, &[(0x0b, 1), (0x0c, 1)]),
            (0x0a, 4, &[(0x0a, 2), (0x0c, 2)]),
            (0x0d, 2, &[(0x0d, 1), (0x0e, 1)]),
            (0x0e, 4, &[(0x0e, 2), (0x10, 2)]),
            (0x00, 8, &[(0x00, 4), (0x04, 4)]),
            (0x01, 8, &[(0x01, 1), (0x02, 2), (0x04, 4), (0x08, 1)]),
            (0x00, 3, &[(0x00, 2), (0x02, 1)]),
            (0x03, 3, &[(0x03, 1), (0x04, 2)]),
            (0x02, 4, &[(0x02, 2), (0x04, 2)]),
            (0x04, 4, &[(0x04, 4)]),
            (0x06, 1, &[(0x06, 1)]),
            (0x0c, 2, &[(0x0c, 2)]),
            (0x00, 0, &[]),
            (u64::MAX, 2, &[(u64::MAX, 1)]),
        ];
        for &(offset, len, want) in table {
            assert_eq!(pieces(offset, len), want, "{len} bytes at {offset:#x}");
        }
    }

    #[test]
    fn pieces_are_greedy_aligned_and_cover_the_access() {
        for offset in 0..40u64 {
            for len in 0..=12usize {
                let p = pieces(offset, len);
                let mut at = offset;
                for &(o, l) in &p {
                    assert_eq!(o, at, "contiguous");
                    assert!(matches!(l, 1 | 2 | 4), "width {l}");
                    assert_eq!(o % l as u64, 0, "naturally aligned");
                    // Greedy: the next larger width would be misaligned, too long or > 4.
                    let bigger = l * 2;
                    assert!(
                        bigger > MAX_PIECE
                            || o % bigger as u64 != 0
                            || (at - offset) as usize + bigger > len,
                        "piece ({o:#x}, {l}) of {len} at {offset:#x} could be {bigger}"
                    );
                    at += l as u64;
                }
                assert_eq!(at, offset + len as u64, "covers {len} at {offset:#x}");
                let (lo, hi) = split_access(offset, len).size_hint();
                assert!(lo <= p.len() && p.len() <= hi.unwrap());
                if matches!(len, 1 | 2 | 4) && offset % len as u64 == 0 {
                    assert_eq!(p, [(offset, len)], "aligned access stays whole");
                }
            }
        }
    }
}
