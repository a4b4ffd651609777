//! The operations a fuzz input is made of, decoded with `arbitrary`.
//!
//! `Arbitrary` is implemented by hand on a fixed little-endian byte layout (one
//! tag byte, then the fields) instead of derived: the derived layout depends on
//! the `arbitrary` version, while seed files must keep their meaning. [`encode`]
//! is the exact inverse of [`decode`], so seeds are written from readable recipes.

use arbitrary::{Arbitrary, Result, Unstructured};
use i6300esb::WatchdogAction;

/// The most operations one input runs (keeps every run short).
pub const MAX_OPS: usize = 4096;

/// One step of a fuzz run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// PCI configuration read of `width` (0-8) bytes.
    ConfigRead {
        /// Byte offset; see [`wide_offset`] for the far end.
        offset: u16,
        /// Access width in bytes, 0 to 8.
        width: u8,
    },
    /// PCI configuration write of the low `width` bytes of `value`.
    ConfigWrite {
        /// Byte offset; see [`wide_offset`].
        offset: u16,
        /// Access width in bytes, 0 to 8.
        width: u8,
        /// Little-endian value; bytes past `width` are dropped.
        value: u64,
    },
    /// BAR0 read of `width` (0-8) bytes.
    Bar0Read {
        /// Offset inside BAR0; see [`wide_offset`].
        offset: u16,
        /// Access width in bytes, 0 to 8.
        width: u8,
    },
    /// BAR0 write of the low `width` bytes of `value`.
    Bar0Write {
        /// Offset inside BAR0; see [`wide_offset`].
        offset: u16,
        /// Access width in bytes, 0 to 8.
        width: u8,
        /// Little-endian value; bytes past `width` are dropped.
        value: u64,
    },
    /// Move the clock forward by `count` units of `scale` (0 ns, 1 µs, 2 ms, 3 s).
    Advance {
        /// 0 = ns, 1 = µs, 2 = ms, 3 = s.
        scale: u8,
        /// How many units.
        count: u16,
    },
    /// Move the clock to the device's next deadline (or one nanosecond before it).
    AdvanceToDeadline {
        /// Stop one nanosecond short of the deadline.
        minus_one: bool,
    },
    /// The host pauses the VM.
    Pause,
    /// The host resumes the VM.
    Resume,
    /// state() -> to_bytes -> from_bytes -> restore, replacing the device.
    Snapshot,
    /// The machine reset a VMM performs (keeps the timeout flag).
    WarmReset,
    /// A power-on reset (clears the timeout flag).
    PowerOnReset,
    /// The two unlock writes (16-bit 0x80 then 0x86 to BAR0 + 0x0C).
    Unlock,
    /// Flip bits of the saved state's encoding and try to decode and restore it.
    TamperSnapshot {
        /// Byte to change (modulo the encoding's length).
        index: u8,
        /// Bits to flip.
        xor: u8,
    },
}

/// The actions, indexed by the input's first byte.
pub const ACTIONS: [WatchdogAction; 7] = WatchdogAction::ALL;

/// A whole fuzz input: the configured action and the operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuzzInput {
    /// What the device requests when it fires.
    pub action: WatchdogAction,
    /// The steps, in order.
    pub ops: Vec<Op>,
}

/// An offset field as the device sees it: 0xFF00 and above stand for the last
/// 256 values of the address type, so the far end (overflowing `offset + len`)
/// is reachable too.
pub fn wide_offset(offset: u16) -> u64 {
    if offset >= 0xff00 {
        u64::MAX - u64::from(offset & 0xff)
    } else {
        u64::from(offset)
    }
}

fn u16_le(u: &mut Unstructured<'_>) -> Result<u16> {
    let lo = u8::arbitrary(u)?;
    let hi = u8::arbitrary(u)?;
    Ok(u16::from_le_bytes([lo, hi]))
}

fn u64_le(u: &mut Unstructured<'_>) -> Result<u64> {
    let mut b = [0u8; 8];
    for byte in &mut b {
        *byte = u8::arbitrary(u)?;
    }
    Ok(u64::from_le_bytes(b))
}

const TAGS: u8 = 13;

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let op = match u8::arbitrary(u)? % TAGS {
            0 => Op::ConfigRead {
                offset: u16_le(u)?,
                width: u8::arbitrary(u)? % 9,
            },
            1 => Op::ConfigWrite {
                offset: u16_le(u)?,
                width: u8::arbitrary(u)? % 9,
                value: u64_le(u)?,
            },
            2 => Op::Bar0Read {
                offset: u16_le(u)?,
                width: u8::arbitrary(u)? % 9,
            },
            3 => Op::Bar0Write {
                offset: u16_le(u)?,
                width: u8::arbitrary(u)? % 9,
                value: u64_le(u)?,
            },
            4 => Op::Advance {
                scale: u8::arbitrary(u)? % 4,
                count: u16_le(u)?,
            },
            5 => Op::AdvanceToDeadline {
                minus_one: u8::arbitrary(u)? & 1 == 1,
            },
            6 => Op::Pause,
            7 => Op::Resume,
            8 => Op::Snapshot,
            9 => Op::WarmReset,
            10 => Op::PowerOnReset,
            11 => Op::Unlock,
            _ => Op::TamperSnapshot {
                index: u8::arbitrary(u)?,
                xor: u8::arbitrary(u)?,
            },
        };
        Ok(op)
    }
}

impl<'a> Arbitrary<'a> for FuzzInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let action = ACTIONS[usize::from(u8::arbitrary(u)?) % ACTIONS.len()];
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(FuzzInput { action, ops })
    }
}

/// Decode fuzzer bytes. Never fails: missing bytes read as zeros.
pub fn decode(data: &[u8]) -> FuzzInput {
    let mut u = Unstructured::new(data);
    FuzzInput::arbitrary(&mut u).unwrap_or(FuzzInput {
        action: WatchdogAction::Reset,
        ops: Vec::new(),
    })
}

/// The bytes that [`decode`] turns back into `input`.
pub fn encode(input: &FuzzInput) -> Vec<u8> {
    let action = ACTIONS
        .iter()
        .position(|&a| a == input.action)
        .expect("every action is in ACTIONS") as u8;
    let mut out = vec![action];
    for op in &input.ops {
        match *op {
            Op::ConfigRead { offset, width } => {
                out.push(0);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(width);
            }
            Op::ConfigWrite {
                offset,
                width,
                value,
            } => {
                out.push(1);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(width);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::Bar0Read { offset, width } => {
                out.push(2);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(width);
            }
            Op::Bar0Write {
                offset,
                width,
                value,
            } => {
                out.push(3);
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(width);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Op::Advance { scale, count } => {
                out.push(4);
                out.push(scale);
                out.extend_from_slice(&count.to_le_bytes());
            }
            Op::AdvanceToDeadline { minus_one } => {
                out.push(5);
                out.push(u8::from(minus_one));
            }
            Op::Pause => out.push(6),
            Op::Resume => out.push(7),
            Op::Snapshot => out.push(8),
            Op::WarmReset => out.push(9),
            Op::PowerOnReset => out.push(10),
            Op::Unlock => out.push(11),
            Op::TamperSnapshot { index, xor } => {
                out.extend_from_slice(&[12, index, xor]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_inverts_decode() {
        let input = FuzzInput {
            action: WatchdogAction::InjectNmi,
            ops: vec![
                Op::ConfigRead {
                    offset: 0x68,
                    width: 1,
                },
                Op::ConfigWrite {
                    offset: 0xffff,
                    width: 8,
                    value: u64::MAX,
                },
                Op::Bar0Read {
                    offset: 0x0c,
                    width: 2,
                },
                Op::Bar0Write {
                    offset: 0x0d,
                    width: 3,
                    value: 0x0123_4567_89ab_cdef,
                },
                Op::Advance {
                    scale: 3,
                    count: 65535,
                },
                Op::AdvanceToDeadline { minus_one: true },
                Op::Pause,
                Op::Resume,
                Op::Snapshot,
                Op::WarmReset,
                Op::PowerOnReset,
                Op::Unlock,
                Op::TamperSnapshot {
                    index: 200,
                    xor: 0x81,
                },
            ],
        };
        assert_eq!(decode(&encode(&input)), input);
    }

    #[test]
    fn short_inputs_decode_with_zeros() {
        assert_eq!(decode(&[]).ops, vec![]);
        assert_eq!(
            decode(&[2, 1]),
            FuzzInput {
                action: WatchdogAction::Poweroff,
                ops: vec![Op::ConfigWrite {
                    offset: 0,
                    width: 0,
                    value: 0
                }]
            }
        );
        assert_eq!(wide_offset(0xff00), u64::MAX);
        assert_eq!(wide_offset(0xff05), u64::MAX - 5);
        assert_eq!(wide_offset(0x0123), 0x123);
    }
}
