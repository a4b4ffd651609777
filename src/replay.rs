//! Replay of i6300esb register traces (format v1) against the device model.
//!
//! A trace (see `docs/TRACE-FORMAT.md`) lists every access a
//! guest made to the device's configuration space and BAR0, with times, plus the
//! watchdog actions the reference (QEMU 7.2) took. This module
//!
//! - parses a trace into typed lines ([`parse`], errors as [`ParseError`] with the
//!   line number, never a panic),
//! - replays it against a fresh [`I6300Esb`] on a [`ManualClock`] in virtual time
//!   ([`replay`]), producing the model's own trace,
//! - and compares the two by the rules of `docs/TRACE-FORMAT.md` §3 ([`check`]).
//!
//! `vmpulse replay [--action NAME] [--check] FILE` is a thin wrapper around these.
//!
//! ```
//! use i6300esb::WatchdogAction;
//! use vmpulse::replay::{check, parse};
//!
//! let text = concat!(
//!     "# i6300esb trace v1\n",
//!     "# scenario: vendor id only; qemu -M pc -watchdog-action reset\n",
//!     "# reference: example\n",
//!     "# columns: time_ns space op offset size value\n",
//!     "0 cfg r 0x00 2 0x8086\n",
//!     "1000 end host-qmp-quit\n",
//! );
//! let trace = parse(text).unwrap();
//! assert_eq!(trace.scenario_action(), Some("reset"));
//! let report = check(&trace, WatchdogAction::Reset);
//! assert!(report.mismatches.is_empty());
//! assert_eq!(report.reads_checked, 1);
//! ```

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use i6300esb::{Expiry, I6300Esb, ManualClock, WatchdogAction};

/// The first header line of a v1 trace.
pub const HEADER_MAGIC: &str = "# i6300esb trace v1";
/// Prefix of the second header line.
pub const HEADER_SCENARIO: &str = "# scenario: ";
/// Prefix of the third header line.
pub const HEADER_REFERENCE: &str = "# reference: ";
/// The fourth header line.
pub const HEADER_COLUMNS: &str = "# columns: time_ns space op offset size value";

/// Earliest a model may fire relative to the trace's action line (docs/TRACE-FORMAT.md §3.4).
pub const ACTION_EARLY_NS: u64 = 5_000_000;
/// Latest a model may fire relative to the trace's action line (docs/TRACE-FORMAT.md §3.4).
pub const ACTION_LATE_NS: u64 = 1_000;

/// Size of the configuration space: `cfg` offsets are below it.
const CONFIG_SPACE_BYTES: u64 = 256;
/// Size of BAR0: `mmio` offsets are below it.
const BAR0_BYTES: u64 = 16;
/// Bound on deadline steps per line, so a misbehaving model cannot hang a replay.
const MAX_STEPS_PER_LINE: usize = 10_000;

/// Which address space an access went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    /// PCI configuration space (`cfg`).
    Config,
    /// Memory BAR0 (`mmio`), offset relative to the BAR.
    Mmio,
}

impl Space {
    /// `cfg` or `mmio`.
    pub fn name(self) -> &'static str {
        match self {
            Space::Config => "cfg",
            Space::Mmio => "mmio",
        }
    }
}

/// Read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `r`: the value is what the device returned.
    Read,
    /// `w`: the value is what the guest wrote.
    Write,
}

impl Op {
    /// `r` or `w`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "r",
            Op::Write => "w",
        }
    }
}

/// One guest access as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// Configuration space or BAR0.
    pub space: Space,
    /// Read or write.
    pub op: Op,
    /// Byte offset in the space.
    pub offset: u64,
    /// Width in bytes: 1, 2 or 4.
    pub size: u8,
    /// The little-endian value read or written.
    pub value: u32,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} 0x{:02x} {} {}",
            self.space.name(),
            self.op.name(),
            self.offset,
            self.size,
            format_value(self.value, self.size)
        )
    }
}

/// What one data line says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `cfg`/`mmio` access.
    Access(Access),
    /// `action <name>`: the reference fired with this action.
    Action(WatchdogAction),
    /// `reset`: machine reset.
    Reset,
    /// `end <reason>`: the recording stopped.
    End(String),
}

/// A data line with its time and its line number in the file (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// Virtual time in nanoseconds.
    pub time_ns: u64,
    /// What happened.
    pub record: Record,
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.record {
            Record::Access(a) => write!(f, "{} {}", self.time_ns, a),
            Record::Action(a) => write!(f, "{} action {}", self.time_ns, a.name()),
            Record::Reset => write!(f, "{} reset", self.time_ns),
            Record::End(reason) => write!(f, "{} end {}", self.time_ns, reason),
        }
    }
}

/// A parsed v1 trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The text after `# scenario: `.
    pub scenario: String,
    /// The text after `# reference: `.
    pub reference: String,
    /// The data lines in file order; the last one is the `end` line.
    pub lines: Vec<TraceLine>,
}

impl Trace {
    /// The action named by `-watchdog-action X` in the scenario line, if any.
    pub fn scenario_action(&self) -> Option<&str> {
        let mut words = self.scenario.split_whitespace();
        while let Some(w) = words.next() {
            if w == "-watchdog-action" {
                return words.next().map(|s| s.trim_end_matches([';', ',']));
            }
        }
        None
    }

    /// The time of the `end` line.
    pub fn end_time_ns(&self) -> u64 {
        self.lines.last().map_or(0, |l| l.time_ns)
    }

    /// The four header lines, as they appear in the file.
    pub fn header_lines(&self) -> [String; 4] {
        [
            HEADER_MAGIC.to_string(),
            format!("{HEADER_SCENARIO}{}", self.scenario),
            format!("{HEADER_REFERENCE}{}", self.reference),
            HEADER_COLUMNS.to_string(),
        ]
    }
}

/// Why a trace could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The file has fewer than four header lines.
    #[error("missing header line (expected {0:?})")]
    MissingHeader(&'static str),
    /// A header line is not what the format requires.
    #[error("bad header: expected {expected:?}, found {found:?}")]
    BadHeader {
        /// What the line should be (or start with).
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// An empty data line.
    #[error("empty line")]
    EmptyLine,
    /// A carriage return: the format uses `\n` line endings only.
    #[error("carriage return in line (the format uses \\n line endings)")]
    CarriageReturn,
    /// Fields not separated by exactly one space, or leading/trailing spaces.
    #[error("fields must be separated by exactly one space")]
    Spacing,
    /// The time is not a decimal integer of nanoseconds.
    #[error("time {0:?} is not a decimal integer of nanoseconds")]
    BadTime(String),
    /// The time is smaller than the previous line's.
    #[error("time {time} is before the previous line's {previous}")]
    TimeDecreasing {
        /// This line's time.
        time: u64,
        /// The previous line's time.
        previous: u64,
    },
    /// An unknown line kind or access op.
    #[error("unknown op {0:?} (expected cfg, mmio, action, reset or end)")]
    UnknownKind(String),
    /// An access op other than `r`/`w`.
    #[error("unknown access op {0:?} (expected r or w)")]
    UnknownOp(String),
    /// Wrong number of fields for the line kind.
    #[error("{kind} line needs {expected} fields, found {found}")]
    FieldCount {
        /// The line kind.
        kind: &'static str,
        /// How many fields it needs.
        expected: usize,
        /// How many it has.
        found: usize,
    },
    /// A hexadecimal field is malformed.
    #[error("bad hex {field} {text:?} (expected 0x and lowercase hex digits)")]
    BadHex {
        /// `offset` or `value`.
        field: &'static str,
        /// The text found.
        text: String,
    },
    /// An offset with fewer than two digits.
    #[error("offset {0:?} needs at least two hex digits")]
    ShortOffset(String),
    /// An offset outside the space.
    #[error("offset {offset:#04x} outside {space} space (size {limit:#x})")]
    OffsetRange {
        /// `cfg` or `mmio`.
        space: &'static str,
        /// The offset.
        offset: u64,
        /// The size of the space.
        limit: u64,
    },
    /// The size is not 1, 2 or 4.
    #[error("size {0:?} is not 1, 2 or 4")]
    BadSize(String),
    /// The value does not have exactly 2 × size digits.
    #[error("value {text:?} must have exactly {digits} hex digits for size {size}")]
    ValueWidth {
        /// The text found.
        text: String,
        /// The size of the access.
        size: u8,
        /// The digits required.
        digits: usize,
    },
    /// An unknown action name.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// A line after the `end` line.
    #[error("line after the end line")]
    AfterEnd,
    /// The file has no `end` line.
    #[error("missing end line")]
    MissingEnd,
}

/// A parse error with the 1-based line it concerns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}: {kind}")]
pub struct ParseError {
    /// 1-based line number (for a missing `end`, the line after the last).
    pub line: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

/// Format a value as the trace does: `0x` and exactly 2 × `size` lowercase digits.
pub fn format_value(value: u32, size: u8) -> String {
    format!("0x{:0width$x}", value, width = usize::from(size) * 2)
}

/// Parse `0x` followed by lowercase hex digits; returns the value and digit count.
fn parse_hex(text: &str, field: &'static str) -> Result<(u64, usize), ParseErrorKind> {
    let bad = || ParseErrorKind::BadHex {
        field,
        text: text.to_string(),
    };
    let digits = text.strip_prefix("0x").ok_or_else(bad)?;
    if digits.is_empty()
        || digits.len() > 16
        || !digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(bad());
    }
    let value = u64::from_str_radix(digits, 16).map_err(|_| bad())?;
    Ok((value, digits.len()))
}

fn parse_access(space: Space, fields: &[&str]) -> Result<Access, ParseErrorKind> {
    if fields.len() != 6 {
        return Err(ParseErrorKind::FieldCount {
            kind: space.name(),
            expected: 6,
            found: fields.len(),
        });
    }
    let op = match fields[2] {
        "r" => Op::Read,
        "w" => Op::Write,
        other => return Err(ParseErrorKind::UnknownOp(other.to_string())),
    };
    let (offset, offset_digits) = parse_hex(fields[3], "offset")?;
    if offset_digits < 2 {
        return Err(ParseErrorKind::ShortOffset(fields[3].to_string()));
    }
    let limit = match space {
        Space::Config => CONFIG_SPACE_BYTES,
        Space::Mmio => BAR0_BYTES,
    };
    if offset >= limit {
        return Err(ParseErrorKind::OffsetRange {
            space: space.name(),
            offset,
            limit,
        });
    }
    let size: u8 = match fields[4] {
        "1" => 1,
        "2" => 2,
        "4" => 4,
        other => return Err(ParseErrorKind::BadSize(other.to_string())),
    };
    let (value, value_digits) = parse_hex(fields[5], "value")?;
    let digits = usize::from(size) * 2;
    if value_digits != digits {
        return Err(ParseErrorKind::ValueWidth {
            text: fields[5].to_string(),
            size,
            digits,
        });
    }
    // At most 8 digits were accepted above, so the value fits.
    let value = u32::try_from(value).map_err(|_| ParseErrorKind::ValueWidth {
        text: fields[5].to_string(),
        size,
        digits,
    })?;
    Ok(Access {
        space,
        op,
        offset,
        size,
        value,
    })
}

fn parse_data_line(text: &str) -> Result<(u64, Record), ParseErrorKind> {
    if text.is_empty() {
        return Err(ParseErrorKind::EmptyLine);
    }
    if text.contains('\r') {
        return Err(ParseErrorKind::CarriageReturn);
    }
    let fields: Vec<&str> = text.split(' ').collect();
    if fields.iter().any(|f| f.is_empty()) || text.contains('\t') {
        return Err(ParseErrorKind::Spacing);
    }
    let time_text = fields[0];
    if !time_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseErrorKind::BadTime(time_text.to_string()));
    }
    let time: u64 = time_text
        .parse()
        .map_err(|_| ParseErrorKind::BadTime(time_text.to_string()))?;
    let kind = fields.get(1).copied().unwrap_or("");
    let record = match kind {
        "cfg" => Record::Access(parse_access(Space::Config, &fields)?),
        "mmio" => Record::Access(parse_access(Space::Mmio, &fields)?),
        "action" => {
            if fields.len() != 3 {
                return Err(ParseErrorKind::FieldCount {
                    kind: "action",
                    expected: 3,
                    found: fields.len(),
                });
            }
            let action = WatchdogAction::from_str(fields[2])
                .map_err(|_| ParseErrorKind::UnknownAction(fields[2].to_string()))?;
            Record::Action(action)
        }
        "reset" => {
            if fields.len() != 2 {
                return Err(ParseErrorKind::FieldCount {
                    kind: "reset",
                    expected: 2,
                    found: fields.len(),
                });
            }
            Record::Reset
        }
        "end" => {
            if fields.len() != 3 {
                return Err(ParseErrorKind::FieldCount {
                    kind: "end",
                    expected: 3,
                    found: fields.len(),
                });
            }
            Record::End(fields[2].to_string())
        }
        other => return Err(ParseErrorKind::UnknownKind(other.to_string())),
    };
    Ok((time, record))
}

/// Parse the text of a v1 trace.
///
/// Checks the four header lines, every data line's syntax (fields separated by
/// one space, decimal times that never decrease, `0x` lowercase hex offsets of
/// at least two digits inside the space, sizes 1/2/4, values of exactly 2 × size
/// digits, known action names) and that exactly one `end` line comes last. The
/// first error found is returned with its 1-based line number.
pub fn parse(text: &str) -> Result<Trace, ParseError> {
    // A final newline ends the last line; it does not start an empty one.
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = body.split('\n').enumerate().map(|(i, l)| (i + 1, l));
    let at = |line: usize, kind: ParseErrorKind| ParseError { line, kind };

    let mut seen = 0;
    let mut header = |expected: &'static str, exact: bool| -> Result<String, ParseError> {
        let (n, l) = lines
            .next()
            .filter(|_| !text.is_empty())
            .ok_or(ParseError {
                line: seen + 1,
                kind: ParseErrorKind::MissingHeader(expected),
            })?;
        seen = n;
        let ok = if exact {
            l == expected
        } else {
            l.starts_with(expected)
        };
        if !ok || l.contains('\r') {
            return Err(at(
                n,
                ParseErrorKind::BadHeader {
                    expected,
                    found: l.to_string(),
                },
            ));
        }
        Ok(l[expected.len()..].to_string())
    };
    header(HEADER_MAGIC, true)?;
    let scenario = header(HEADER_SCENARIO, false)?;
    let reference = header(HEADER_REFERENCE, false)?;
    header(HEADER_COLUMNS, true)?;

    let mut out = Vec::new();
    let mut previous = 0u64;
    let mut last_line = 4;
    for (n, l) in lines {
        last_line = n;
        if matches!(
            out.last(),
            Some(TraceLine {
                record: Record::End(_),
                ..
            })
        ) {
            return Err(at(n, ParseErrorKind::AfterEnd));
        }
        let (time, record) = parse_data_line(l).map_err(|k| at(n, k))?;
        if time < previous {
            return Err(at(n, ParseErrorKind::TimeDecreasing { time, previous }));
        }
        previous = time;
        out.push(TraceLine {
            line: n,
            time_ns: time,
            record,
        });
    }
    if !matches!(
        out.last(),
        Some(TraceLine {
            record: Record::End(_),
            ..
        })
    ) {
        return Err(at(last_line + 1, ParseErrorKind::MissingEnd));
    }
    Ok(Trace {
        scenario,
        reference,
        lines: out,
    })
}

/// One line of the model's trace, and the input line it answers (if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelLine {
    /// The input line this output line corresponds to; `None` for an expiry.
    pub input_line: Option<usize>,
    /// The line as the model produced it.
    pub line: TraceLine,
}

/// The result of replaying a trace against the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// The model's trace in time order: accesses (reads with the model's
    /// values), `action` lines at the model's expiry times, `reset` and `end`.
    pub lines: Vec<ModelLine>,
    /// Expiries the model had after the `end` line but within
    /// [`ACTION_LATE_NS`] of it (used only to match an action at the end).
    pub late_expiries: Vec<Expiry>,
}

/// Replay a trace against a fresh device in its power-on state at time 0 that
/// requests `action` when it fires.
///
/// Before each line the virtual clock is advanced to the line's time, stepping
/// through the device's deadlines so each expiry happens (and is recorded) at
/// its own time. `reset` lines are the warm reset the VM performs.
pub fn replay(trace: &Trace, action: WatchdogAction) -> Replay {
    let clock = ManualClock::new(0);
    let mut dev = I6300Esb::new(action, clock.clone());
    let mut out = Replay::default();

    let advance = |dev: &mut I6300Esb<ManualClock>, to: u64| -> Vec<Expiry> {
        let mut fired: Vec<Expiry> = Vec::new();
        for _ in 0..MAX_STEPS_PER_LINE {
            match dev.next_deadline() {
                Some(d) if d <= to => {
                    clock.set(d);
                    if dev.poll(&mut fired) == 0 && dev.next_deadline() == Some(d) {
                        // A deadline that neither fires nor moves: stop stepping.
                        break;
                    }
                }
                _ => break,
            }
        }
        clock.set(to);
        dev.poll(&mut fired);
        fired
    };

    for input in &trace.lines {
        for e in advance(&mut dev, input.time_ns) {
            out.lines.push(ModelLine {
                input_line: None,
                line: TraceLine {
                    line: input.line,
                    time_ns: e.time_ns,
                    record: Record::Action(e.action),
                },
            });
        }
        let record = match &input.record {
            Record::Access(a) => {
                let size = usize::from(a.size);
                let mut model = *a;
                match (a.space, a.op) {
                    (Space::Config, Op::Read) => {
                        let mut buf = [0u8; 4];
                        dev.config_read(a.offset as usize, &mut buf[..size]);
                        model.value = u32::from_le_bytes(buf);
                    }
                    (Space::Config, Op::Write) => {
                        dev.config_write(a.offset as usize, &a.value.to_le_bytes()[..size]);
                    }
                    (Space::Mmio, Op::Read) => {
                        let mut buf = [0u8; 4];
                        dev.bar0_read(a.offset, &mut buf[..size]);
                        model.value = u32::from_le_bytes(buf);
                    }
                    (Space::Mmio, Op::Write) => {
                        dev.bar0_write(a.offset, &a.value.to_le_bytes()[..size]);
                    }
                }
                Some(Record::Access(model))
            }
            // The reference's actions are compared, not replayed.
            Record::Action(_) => None,
            Record::Reset => {
                dev.warm_reset();
                Some(Record::Reset)
            }
            Record::End(reason) => Some(Record::End(reason.clone())),
        };
        if let Some(record) = record {
            out.lines.push(ModelLine {
                input_line: Some(input.line),
                line: TraceLine {
                    line: input.line,
                    time_ns: input.time_ns,
                    record,
                },
            });
        }
    }
    let end = trace.end_time_ns();
    out.late_expiries = advance(&mut dev, end.saturating_add(ACTION_LATE_NS));
    out
}

/// Render the model's trace in the v1 format (header of the input, then lines).
pub fn render(trace: &Trace, replay: &Replay) -> String {
    let mut s = String::new();
    for h in trace.header_lines() {
        s.push_str(&h);
        s.push('\n');
    }
    for l in &replay.lines {
        s.push_str(&l.line.to_string());
        s.push('\n');
    }
    s
}

/// One difference between the trace and the model. `Display` gives the
/// description without the line number (see [`Mismatch::line`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// A read returned another value than recorded.
    ReadValue {
        /// The trace line.
        line: usize,
        /// The access as recorded.
        access: Access,
        /// What the model returned.
        got: u32,
    },
    /// The trace has an action the model did not take.
    MissingAction {
        /// The trace's action line.
        line: usize,
        /// Its time.
        time_ns: u64,
        /// Its action.
        action: WatchdogAction,
    },
    /// The model fired where the trace has no action.
    ExtraAction {
        /// The first trace line at or after the expiry.
        line: usize,
        /// When the model fired.
        time_ns: u64,
        /// What it asked for.
        action: WatchdogAction,
    },
    /// The model fired another action than recorded.
    OtherAction {
        /// The trace's action line.
        line: usize,
        /// The recorded action.
        expected: WatchdogAction,
        /// The model's action.
        got: WatchdogAction,
        /// Model time minus trace time, in ns.
        offset_ns: i128,
    },
    /// The model fired outside `t − 5 ms ≤ m ≤ t + 1 µs`.
    ActionTime {
        /// The trace's action line.
        line: usize,
        /// The action.
        action: WatchdogAction,
        /// The trace's time.
        expected_ns: u64,
        /// The model's time.
        got_ns: u64,
    },
}

impl Mismatch {
    /// The trace line the mismatch concerns.
    pub fn line(&self) -> usize {
        match self {
            Mismatch::ReadValue { line, .. }
            | Mismatch::MissingAction { line, .. }
            | Mismatch::ExtraAction { line, .. }
            | Mismatch::OtherAction { line, .. }
            | Mismatch::ActionTime { line, .. } => *line,
        }
    }
}

fn micros(ns: i128) -> String {
    format!("{:+.3} us", ns as f64 / 1000.0)
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::ReadValue { access, got, .. } => write!(
                f,
                "read value differs: {} {} 0x{:02x} {}: expected {}, got {}",
                access.space.name(),
                access.op.name(),
                access.offset,
                access.size,
                format_value(access.value, access.size),
                format_value(*got, access.size)
            ),
            Mismatch::MissingAction {
                time_ns, action, ..
            } => write!(
                f,
                "action {action} at {time_ns} ns missing: the model did not fire"
            ),
            Mismatch::ExtraAction {
                time_ns, action, ..
            } => write!(
                f,
                "extra action {action}: the model fired at {time_ns} ns where the trace has no action"
            ),
            Mismatch::OtherAction {
                expected,
                got,
                offset_ns,
                ..
            } => write!(
                f,
                "action of another name: expected {expected}, the model fired {got} (offset {})",
                micros(*offset_ns)
            ),
            Mismatch::ActionTime {
                action,
                expected_ns,
                got_ns,
                ..
            } => write!(
                f,
                "action {action} outside the window: the model fired at {got_ns} ns, offset {} from {expected_ns} ns (allowed {} .. {})",
                micros(i128::from(*got_ns) - i128::from(*expected_ns)),
                micros(-i128::from(ACTION_EARLY_NS)),
                micros(i128::from(ACTION_LATE_NS))
            ),
        }
    }
}

/// The outcome of [`check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Every difference, in trace order (reads first by line, then actions).
    pub mismatches: Vec<Mismatch>,
    /// Accesses replayed.
    pub accesses: usize,
    /// Reads compared.
    pub reads_checked: usize,
    /// Action lines matched by an expiry of the same name within the window.
    pub actions_matched: usize,
    /// Model time minus trace time of each matched action, in ns.
    pub action_offsets_ns: Vec<i128>,
}

/// Replay `trace` with `action` and compare by `docs/TRACE-FORMAT.md` §3: every read
/// value must match; the model's expiries up to the `end` line must be the
/// trace's action lines in number, order and name, each at a model time `m` with
/// `t − 5 ms ≤ m ≤ t + 1 µs`. Expiries after the end are not judged (an expiry
/// up to 1 µs after the end may still match an action at the end's time).
pub fn check(trace: &Trace, action: WatchdogAction) -> CheckReport {
    let replayed = replay(trace, action);
    let mut report = CheckReport::default();
    let inputs: std::collections::HashMap<usize, &TraceLine> =
        trace.lines.iter().map(|l| (l.line, l)).collect();

    let mut model_actions: Vec<(usize, Expiry)> = Vec::new();
    for m in &replayed.lines {
        match (&m.line.record, m.input_line) {
            (Record::Access(got), Some(n)) => {
                report.accesses += 1;
                if let Some(TraceLine {
                    record: Record::Access(want),
                    ..
                }) = inputs.get(&n).copied()
                {
                    if want.op == Op::Read {
                        report.reads_checked += 1;
                        if want.value != got.value {
                            report.mismatches.push(Mismatch::ReadValue {
                                line: n,
                                access: *want,
                                got: got.value,
                            });
                        }
                    }
                }
            }
            (Record::Action(a), None) => model_actions.push((
                m.line.line,
                Expiry {
                    action: *a,
                    time_ns: m.line.time_ns,
                },
            )),
            _ => {}
        }
    }
    let end = trace.lines.last().map_or(0, |l| l.line);
    let late: Vec<(usize, Expiry)> = replayed.late_expiries.iter().map(|e| (end, *e)).collect();

    let expected: Vec<(usize, u64, WatchdogAction)> = trace
        .lines
        .iter()
        .filter_map(|l| match l.record {
            Record::Action(a) => Some((l.line, l.time_ns, a)),
            _ => None,
        })
        .collect();
    // Late expiries count only where they can pair with a trace action.
    let take_late = expected
        .len()
        .saturating_sub(model_actions.len())
        .min(late.len());
    model_actions.extend(late.into_iter().take(take_late));

    for i in 0..expected.len().max(model_actions.len()) {
        match (expected.get(i), model_actions.get(i)) {
            (Some(&(line, t, want)), Some(&(_, got))) => {
                let offset = i128::from(got.time_ns) - i128::from(t);
                if got.action != want {
                    report.mismatches.push(Mismatch::OtherAction {
                        line,
                        expected: want,
                        got: got.action,
                        offset_ns: offset,
                    });
                } else if offset < -i128::from(ACTION_EARLY_NS)
                    || offset > i128::from(ACTION_LATE_NS)
                {
                    report.mismatches.push(Mismatch::ActionTime {
                        line,
                        action: want,
                        expected_ns: t,
                        got_ns: got.time_ns,
                    });
                } else {
                    report.actions_matched += 1;
                    report.action_offsets_ns.push(offset);
                }
            }
            (Some(&(line, t, want)), None) => report.mismatches.push(Mismatch::MissingAction {
                line,
                time_ns: t,
                action: want,
            }),
            (None, Some(&(line, got))) => report.mismatches.push(Mismatch::ExtraAction {
                line,
                time_ns: got.time_ns,
                action: got.action,
            }),
            (None, None) => {}
        }
    }
    report.mismatches.sort_by_key(Mismatch::line);
    report
}

/// Arguments of `vmpulse replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Watchdog action the device is configured with.
    #[arg(long, default_value = "reset")]
    pub action: String,
    /// Compare with the input instead of printing the model's trace.
    #[arg(long)]
    pub check: bool,
    /// The trace file.
    pub file: PathBuf,
}

/// Entry point of `vmpulse replay`: exit 0 on success (or a clean check), 1 when
/// `--check` finds mismatches, 2 on bad arguments or a malformed file.
pub fn replay_command(args: ReplayArgs) -> ExitCode {
    let file = args.file.display().to_string();
    let action = match WatchdogAction::from_str(&args.action) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vmpulse replay: --action: {e}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read(&args.file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                eprintln!("{file}:{line}: not ASCII/UTF-8 text");
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("{file}: cannot read: {e}");
            return ExitCode::from(2);
        }
    };
    let trace = match parse(&text) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{file}:{}: {}", e.line, e.kind);
            return ExitCode::from(2);
        }
    };
    if !args.check {
        let out = render(&trace, &replay(&trace, action));
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (e.g. `| head`) is not an error worth a panic.
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
        return ExitCode::SUCCESS;
    }
    let report = check(&trace, action);
    if report.mismatches.is_empty() {
        let offsets: Vec<String> = report
            .action_offsets_ns
            .iter()
            .map(|&o| micros(o))
            .collect();
        println!(
            "{file}: ok: {} accesses, {} reads match, {} actions match with --action {}{}",
            report.accesses,
            report.reads_checked,
            report.actions_matched,
            action,
            if offsets.is_empty() {
                String::new()
            } else {
                format!(" (model - trace: {})", offsets.join(", "))
            }
        );
        ExitCode::SUCCESS
    } else {
        for m in &report.mismatches {
            println!("{file}:{}: {m}", m.line());
        }
        eprintln!(
            "{file}: {} mismatches ({} reads checked, {} actions matched)",
            report.mismatches.len(),
            report.reads_checked,
            report.actions_matched
        );
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "# i6300esb trace v1\n# scenario: test; qemu -M pc -watchdog-action poweroff -no-reboot\n# reference: unit test\n# columns: time_ns space op offset size value\n";

    fn with_body(body: &str) -> String {
        format!("{HEAD}{body}")
    }

    /// Unlock, preloads of 1 s (512 units), enable: the model fires after two stages.
    const ARMED: &str = "0 cfg w 0x10 4 0xfebf1000\n\
        10 cfg w 0x04 2 0x0002\n\
        1000 mmio w 0x0c 2 0x0080\n\
        2000 mmio w 0x0c 2 0x0086\n\
        3000 mmio w 0x00 4 0x00000200\n\
        4000 mmio w 0x0c 2 0x0080\n\
        5000 mmio w 0x0c 2 0x0086\n\
        6000 mmio w 0x04 4 0x00000200\n\
        7000 cfg w 0x68 1 0x02\n";

    /// 7000 ns + 2 × 512 × 983040 ns.
    const FIRES_AT: u64 = 7_000 + 2 * 512 * 983_040;

    #[test]
    fn parses_every_kind_of_line() {
        let t = parse(&with_body(
            "0 cfg r 0x00 2 0x8086\n5 mmio w 0x0c 2 0x0080\n5 action reset\n9 reset\n12 end guest-shutdown\n",
        ))
        .unwrap();
        assert_eq!(t.scenario_action(), Some("poweroff"));
        assert_eq!(t.reference, "unit test");
        assert_eq!(t.lines.len(), 5);
        assert_eq!(
            t.lines[0],
            TraceLine {
                line: 5,
                time_ns: 0,
                record: Record::Access(Access {
                    space: Space::Config,
                    op: Op::Read,
                    offset: 0,
                    size: 2,
                    value: 0x8086
                })
            }
        );
        assert_eq!(
            t.lines[1].record,
            Record::Access(Access {
                space: Space::Mmio,
                op: Op::Write,
                offset: 0x0c,
                size: 2,
                value: 0x80
            })
        );
        assert_eq!(t.lines[2].record, Record::Action(WatchdogAction::Reset));
        assert_eq!(t.lines[3].record, Record::Reset);
        assert_eq!(t.lines[4].record, Record::End("guest-shutdown".into()));
        assert_eq!(t.lines[4].line, 9);
        assert_eq!(t.end_time_ns(), 12);
    }

    #[test]
    fn lines_render_back_to_their_text() {
        let body = "0 cfg r 0x00 4 0x25ab8086\n17 cfg r 0x0e 1 0x00\n18 mmio r 0x0c 2 0x1200\n20 action inject-nmi\n30 end watchdog-poweroff\n";
        let text = with_body(body);
        let t = parse(&text).unwrap();
        let mut again = String::new();
        for h in t.header_lines() {
            again.push_str(&h);
            again.push('\n');
        }
        for l in &t.lines {
            again.push_str(&l.to_string());
            again.push('\n');
        }
        assert_eq!(again, text);
    }

    #[test]
    fn accepts_a_missing_final_newline() {
        let t = parse(&with_body("0 end host-qmp-quit")).unwrap();
        assert_eq!(t.lines.len(), 1);
    }

    #[test]
    fn malformed_files_name_the_line_and_reason() {
        use ParseErrorKind as K;
        type Pred = fn(&ParseErrorKind) -> bool;
        let cases: &[(&str, usize, Pred)] = &[
            ("0 cfg x 0x00 2 0x8086\n1 end x\n", 5, |k| {
                matches!(k, K::UnknownOp(_))
            }),
            ("0 pio r 0x00 2 0x8086\n1 end x\n", 5, |k| {
                matches!(k, K::UnknownKind(_))
            }),
            ("0 cfg r 0x00 2 0x80g6\n1 end x\n", 5, |k| {
                matches!(k, K::BadHex { .. })
            }),
            ("0 cfg r 0x00 2 0x80A6\n1 end x\n", 5, |k| {
                matches!(k, K::BadHex { .. })
            }),
            ("0 cfg r 0x0 2 0x8086\n1 end x\n", 5, |k| {
                matches!(k, K::ShortOffset(_))
            }),
            ("0 cfg r 00 2 0x8086\n1 end x\n", 5, |k| {
                matches!(k, K::BadHex { .. })
            }),
            ("0 cfg r 0x00 2 0x086\n1 end x\n", 5, |k| {
                matches!(k, K::ValueWidth { digits: 4, .. })
            }),
            ("0 cfg r 0x00 4 0x8086\n1 end x\n", 5, |k| {
                matches!(k, K::ValueWidth { digits: 8, .. })
            }),
            ("0 cfg r 0x00 3 0x808600\n1 end x\n", 5, |k| {
                matches!(k, K::BadSize(_))
            }),
            ("0 cfg r 0x00 8 0x0000000000008086\n1 end x\n", 5, |k| {
                matches!(k, K::BadSize(_))
            }),
            ("0 mmio r 0x10 1 0x00\n1 end x\n", 5, |k| {
                matches!(k, K::OffsetRange { .. })
            }),
            ("0 cfg r 0x100 1 0x00\n1 end x\n", 5, |k| {
                matches!(k, K::OffsetRange { .. })
            }),
            ("5 cfg r 0x00 2 0x8086\n4 end x\n", 6, |k| {
                matches!(
                    k,
                    K::TimeDecreasing {
                        time: 4,
                        previous: 5
                    }
                )
            }),
            ("1.5 cfg r 0x00 2 0x8086\n4 end x\n", 5, |k| {
                matches!(k, K::BadTime(_))
            }),
            ("-1 cfg r 0x00 2 0x8086\n4 end x\n", 5, |k| {
                matches!(k, K::BadTime(_))
            }),
            ("99999999999999999999 end x\n", 5, |k| {
                matches!(k, K::BadTime(_))
            }),
            ("0 cfg r 0x00 2 0x8086\n", 6, |k| matches!(k, K::MissingEnd)),
            ("0 end x\n1 cfg r 0x00 2 0x8086\n", 6, |k| {
                matches!(k, K::AfterEnd)
            }),
            ("0 end x\n1 end y\n", 6, |k| matches!(k, K::AfterEnd)),
            ("0 cfg r 0x00 2  0x8086\n1 end x\n", 5, |k| {
                matches!(k, K::Spacing)
            }),
            ("0 cfg r 0x00 2 0x8086 \n1 end x\n", 5, |k| {
                matches!(k, K::Spacing)
            }),
            ("0 cfg r 0x00 2 0x8086\n\n1 end x\n", 6, |k| {
                matches!(k, K::EmptyLine)
            }),
            ("0 cfg r 0x00 2 0x8086\r\n1 end x\n", 5, |k| {
                matches!(k, K::CarriageReturn)
            }),
            ("0 cfg r 0x00 2\n1 end x\n", 5, |k| {
                matches!(k, K::FieldCount { .. })
            }),
            ("0 action explode\n1 end x\n", 5, |k| {
                matches!(k, K::UnknownAction(_))
            }),
            ("0 action\n1 end x\n", 5, |k| {
                matches!(k, K::FieldCount { .. })
            }),
            ("0 reset now\n1 end x\n", 5, |k| {
                matches!(k, K::FieldCount { .. })
            }),
            ("0 end\n", 5, |k| matches!(k, K::FieldCount { .. })),
        ];
        for (body, line, pred) in cases {
            let err = parse(&with_body(body)).expect_err(body);
            assert_eq!(err.line, *line, "{body:?}: {err}");
            assert!(pred(&err.kind), "{body:?}: {err}");
        }
    }

    #[test]
    fn bad_headers_are_rejected() {
        let e = parse("").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(matches!(
            e.kind,
            ParseErrorKind::MissingHeader(HEADER_MAGIC)
        ));
        let e = parse("# i6300esb trace v2\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(matches!(e.kind, ParseErrorKind::BadHeader { .. }));
        let e = parse("# i6300esb trace v1\n# scenario: x\n# columns: x\n").unwrap_err();
        assert_eq!(e.line, 3);
        let e = parse("# i6300esb trace v1\n# scenario: x\n# reference: y\n").unwrap_err();
        assert_eq!(e.line, 4);
        assert!(matches!(
            e.kind,
            ParseErrorKind::MissingHeader(HEADER_COLUMNS)
        ));
        let e = parse(
            "# i6300esb trace v1\n# scenario: x\n# reference: y\n# columns: other\n0 end x\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4);
        let e = parse(&with_body("")).unwrap_err();
        assert_eq!((e.line, e.kind), (5, ParseErrorKind::MissingEnd));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        let alphabet = b"0123456789abcdefx cfgmiorwendaction\n#";
        for _ in 0..2000 {
            let mut body = String::new();
            for _ in 0..(seed % 80) {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                body.push(alphabet[(seed >> 16) as usize % alphabet.len()] as char);
            }
            let _ = parse(&with_body(&body));
            let _ = parse(&body);
        }
    }

    #[test]
    fn scenario_action_is_read_from_the_qemu_options() {
        let t = parse(&with_body("0 end x\n")).unwrap();
        assert_eq!(t.scenario_action(), Some("poweroff"));
        let t = parse("# i6300esb trace v1\n# scenario: nothing\n# reference: y\n# columns: time_ns space op offset size value\n0 end x\n").unwrap();
        assert_eq!(t.scenario_action(), None);
    }

    #[test]
    fn replay_fires_at_the_exact_model_time() {
        let t = parse(&with_body(&format!(
            "{ARMED}3000000000 end host-qmp-quit\n"
        )))
        .unwrap();
        let r = replay(&t, WatchdogAction::Poweroff);
        let actions: Vec<&TraceLine> = r
            .lines
            .iter()
            .filter(|l| l.input_line.is_none())
            .map(|l| &l.line)
            .collect();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].time_ns, FIRES_AT);
        assert_eq!(actions[0].record, Record::Action(WatchdogAction::Poweroff));
        // The expiry is listed before the end line, in time order.
        let text = render(&t, &r);
        assert!(text.ends_with(&format!(
            "{FIRES_AT} action poweroff\n3000000000 end host-qmp-quit\n"
        )));
    }

    #[test]
    fn check_accepts_an_action_inside_the_window_and_rejects_outside() {
        for (delta, ok) in [
            (0i64, true),
            (1_000, true),
            (1_001, false),
            (-5_000_000, true),
            (-5_000_001, false),
            (10_000_000, false),
            (-10_000_000, false),
        ] {
            // delta is model time minus trace time.
            let t_line = (FIRES_AT as i64 - delta) as u64;
            let body = format!(
                "{ARMED}{t_line} action poweroff\n{} end watchdog-poweroff\n",
                t_line.max(FIRES_AT)
            );
            let t = parse(&with_body(&body)).unwrap();
            let r = check(&t, WatchdogAction::Poweroff);
            assert_eq!(
                r.mismatches.is_empty(),
                ok,
                "delta {delta}: {:?}",
                r.mismatches
            );
            if !ok {
                assert!(
                    matches!(r.mismatches[0], Mismatch::ActionTime { line: 14, .. }),
                    "{:?}",
                    r.mismatches
                );
            }
        }
    }

    #[test]
    fn check_counts_missing_extra_and_renamed_actions() {
        // No action line although the model fires: an extra expiry.
        let t = parse(&with_body(&format!(
            "{ARMED}3000000000 end guest-shutdown\n"
        )))
        .unwrap();
        let r = check(&t, WatchdogAction::Poweroff);
        assert_eq!(r.mismatches.len(), 1);
        assert!(matches!(
            r.mismatches[0],
            Mismatch::ExtraAction {
                line: 14,
                time_ns: FIRES_AT,
                action: WatchdogAction::Poweroff
            }
        ));
        // Expiries after the end are not judged.
        let t = parse(&with_body(&format!(
            "{ARMED}1000000000 end guest-shutdown\n"
        )))
        .unwrap();
        assert!(check(&t, WatchdogAction::Poweroff).mismatches.is_empty());
        // An action line the model never reaches: missing.
        let t = parse(&with_body("0 action reset\n1 end x\n")).unwrap();
        let r = check(&t, WatchdogAction::Reset);
        assert_eq!(
            r.mismatches,
            vec![Mismatch::MissingAction {
                line: 5,
                time_ns: 0,
                action: WatchdogAction::Reset
            }]
        );
        // Another action name.
        let body = format!("{ARMED}{FIRES_AT} action poweroff\n{FIRES_AT} end watchdog-poweroff\n");
        let t = parse(&with_body(&body)).unwrap();
        let r = check(&t, WatchdogAction::Reset);
        assert!(matches!(
            r.mismatches[..],
            [Mismatch::OtherAction {
                line: 14,
                expected: WatchdogAction::Poweroff,
                got: WatchdogAction::Reset,
                offset_ns: 0
            }]
        ));
        assert_eq!(check(&t, WatchdogAction::Poweroff).actions_matched, 1);
    }

    #[test]
    fn check_reports_a_differing_read() {
        let t = parse(&with_body(
            "0 cfg r 0x00 4 0x25ab8087\n1 cfg r 0x00 2 0x8086\n2 end x\n",
        ))
        .unwrap();
        let r = check(&t, WatchdogAction::Reset);
        assert_eq!(r.reads_checked, 2);
        assert_eq!(r.mismatches.len(), 1);
        assert_eq!(r.mismatches[0].line(), 5);
        assert_eq!(
            r.mismatches[0].to_string(),
            "read value differs: cfg r 0x00 4: expected 0x25ab8087, got 0x25ab8086"
        );
    }

    #[test]
    fn reset_lines_warm_reset_the_device() {
        // BAR0 programmed, then a machine reset: BAR0 reads 0 again.
        let t = parse(&with_body(
            "0 cfg w 0x10 4 0xfebf1000\n1 cfg r 0x10 4 0xfebf1000\n2 reset\n3 cfg r 0x10 4 0x00000000\n4 end x\n",
        ))
        .unwrap();
        let r = check(&t, WatchdogAction::Reset);
        assert!(r.mismatches.is_empty(), "{:?}", r.mismatches);
        assert_eq!(r.reads_checked, 2);
    }

    #[test]
    fn the_models_own_trace_checks_clean() {
        // Random guest traffic around a short timeout: whatever the model does,
        // its rendered trace parses back and passes --check with the same action.
        let mut seed = 0x2545_f491u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        let mut fired_somewhere = false;
        for action in [
            WatchdogAction::Reset,
            WatchdogAction::Poweroff,
            WatchdogAction::None,
        ] {
            for _ in 0..30 {
                let mut body = String::from(ARMED);
                let mut t = 7_000u64;
                for _ in 0..40 {
                    t += next(400_000_000);
                    let line = match next(6) {
                        0 => format!("{t} mmio w 0x0c 2 0x0080\n{t} mmio w 0x0c 2 0x0086\n{t} mmio w 0x0c 2 0x0100\n"),
                        1 => format!("{t} mmio r 0x0c 2 0x0000\n"),
                        2 => format!("{t} cfg r 0x68 1 0x00\n"),
                        3 => format!("{t} cfg w 0x68 1 0x0{}\n", next(4)),
                        4 => format!("{t} mmio r 0x{:02x} {} 0x{}\n", next(16), 1, "00"),
                        _ => format!("{t} reset\n"),
                    };
                    body.push_str(&line);
                }
                body.push_str(&format!("{} end host-qmp-quit\n", t + 1));
                let input = parse(&with_body(&body)).unwrap();
                let own = render(&input, &replay(&input, action));
                fired_somewhere |= own.contains(" action ");
                let again = parse(&own).unwrap();
                let report = check(&again, action);
                assert!(
                    report.mismatches.is_empty(),
                    "{:?}\n{own}",
                    report.mismatches
                );
            }
        }
        assert!(fired_somewhere);
    }
}
