//! Bounds on what a manifest may cost before it is parsed: its size, its
//! nesting depth, and the length of a value echoed back in a message.
//!
//! The YAML parser's time grows with the square of the nesting depth and its
//! memory with the number of nodes, so both are bounded *before* the parser
//! sees the text: the size when the file is read (one byte more than
//! [`MAX_MANIFEST_BYTES`] at most is ever read), the depth by [`nesting_depth`],
//! a single linear pass over the text.

/// The largest manifest accepted, in bytes (1 MiB; a KubeVirt
/// `VirtualMachine` is a few KiB, and Kubernetes' own limit on an object in
/// etcd is 1.5 MiB).
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// The deepest nesting of collections (sequences and mappings, flow or block)
/// accepted. The YAML deserializer refuses more than 128 too, but only after
/// parsing the whole text; a KubeVirt `VirtualMachine` nests about 15 deep.
pub const MAX_NESTING_DEPTH: usize = 128;

/// The most entries (mapping keys, sequence items, flow collection items)
/// accepted. Parsing costs time and memory per entry (a 1 MiB list of 500,000
/// numbers takes over 100 MB); a KubeVirt `VirtualMachine` has a few hundred.
pub const MAX_ENTRIES: usize = 50_000;

/// The most characters of a value that a message echoes.
pub const MAX_ECHO_CHARS: usize = 200;

/// `text` cut to at most [`MAX_ECHO_CHARS`] characters, the last being `…`
/// when it was cut.
pub fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_ECHO_CHARS) {
        None => text.into(),
        Some(_) => {
            let (end, _) = text
                .char_indices()
                .nth(MAX_ECHO_CHARS - 1)
                .expect("longer than the limit");
            format!("{}…", &text[..end]).into()
        }
    }
}

/// `message` with every double-quoted string in it (as Rust's `{:?}` and
/// serde's messages write values) cut to at most [`MAX_ECHO_CHARS`]
/// characters between its quotes.
pub fn clip_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(4 * MAX_ECHO_CHARS));
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let body = &rest[open + 1..];
        // The closing quote is the first one not escaped by a backslash.
        let mut escaped = false;
        let close = body.char_indices().find_map(|(i, c)| match c {
            _ if escaped => {
                escaped = false;
                None
            }
            '\\' => {
                escaped = true;
                None
            }
            '"' => Some(i),
            _ => None,
        });
        let Some(close) = close else {
            out.push_str(&clip(body));
            return out;
        };
        let inner = &body[..close];
        match inner.char_indices().nth(MAX_ECHO_CHARS) {
            None => out.push_str(inner),
            Some(_) => {
                // Cut without splitting an escape sequence: drop a trailing
                // lone backslash (a `\u{…}` cut short stays readable).
                let cut = clip(inner);
                let cut = cut.strip_suffix('…').unwrap_or(&cut);
                let trailing = cut.chars().rev().take_while(|&c| c == '\\').count();
                let cut = if trailing % 2 == 1 {
                    &cut[..cut.len() - 1]
                } else {
                    cut
                };
                out.push_str(cut);
                out.push('…');
            }
        }
        out.push('"');
        rest = &body[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The nesting depth found in YAML text, or the first depth past `limit` (the
/// scan stops there). One pass, linear in the text, without building values.
///
/// The depth counts open flow collections (`[`, `{`) plus open block
/// collections: each block sequence entry (`- `), explicit key (`? `) or
/// implicit key (`key:`) opens one at its column, and a line closes those at
/// its own column or deeper. Quoted strings, comments and block scalars (`|`,
/// `>`) are skipped. It is a close estimate rather than YAML's exact
/// structure: it never counts more levels than the text has (so a manifest
/// within the limit is never refused), and a sequence written at its parent
/// key's indentation shares the key's level; the deserializer still refuses
/// what is deeper than 128.
pub fn nesting_depth(text: &str, limit: usize) -> usize {
    measure(text, limit, usize::MAX).depth
}

/// The nesting depth and number of entries of YAML text, as [`nesting_depth`]
/// finds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shape {
    /// The deepest nesting found.
    pub depth: usize,
    /// Mapping keys, block sequence entries, and flow collections and their
    /// items (an estimate: each `,` in a flow collection starts one).
    pub entries: usize,
}

/// Measure `text` in one linear pass; the scan stops as soon as the depth
/// passes `max_depth` or the entries pass `max_entries`.
pub fn measure(text: &str, max_depth: usize, max_entries: usize) -> Shape {
    let mut scan = Scan {
        block: Vec::new(),
        flow: 0,
        deepest: 0,
        entries: 0,
        max_entries,
        limit: max_depth,
        quote: None,
        prev: None,
    };
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(scalar_parent) = scan.line(line) {
            // A block scalar: its lines are text, down to the first
            // non-blank line at or left of its parent's column.
            while let Some(next) = lines.peek() {
                let indent = next.len() - next.trim_start_matches(' ').len();
                let blank = next.trim().is_empty();
                if blank || scalar_parent.map_or(true, |p| indent > p) {
                    lines.next();
                } else {
                    break;
                }
            }
        }
        if scan.over() {
            break;
        }
    }
    Shape {
        depth: scan.deepest,
        entries: scan.entries,
    }
}

struct Scan {
    /// Columns of the open block collections, increasing.
    block: Vec<usize>,
    /// Open flow collections.
    flow: usize,
    deepest: usize,
    limit: usize,
    entries: usize,
    max_entries: usize,
    /// Inside a quoted scalar that continues on the next line.
    quote: Option<u8>,
    /// In flow context, the last character that was not blank (across lines): a
    /// quote starts a quoted scalar only after `[`, `{`, `,`, `:`, `?`; elsewhere
    /// it is part of a plain scalar (`[it's]`), as YAML reads it.
    prev: Option<u8>,
}

impl Scan {
    fn open_block(&mut self, column: usize) {
        self.block.push(column);
        self.entries += 1;
        self.note();
    }

    fn over(&self) -> bool {
        self.deepest > self.limit || self.entries > self.max_entries
    }

    fn note(&mut self) {
        self.deepest = self.deepest.max(self.block.len() + self.flow);
    }

    /// Scan one line; `Some(parent column)` when it starts a block scalar.
    fn line(&mut self, line: &str) -> Option<Option<usize>> {
        let b = line.as_bytes();
        let mut i = 0;
        let continued = self.quote.is_some() || self.flow > 0;
        if let Some(q) = self.quote {
            match close_quote(b, 0, q) {
                Some(end) => {
                    self.quote = None;
                    self.prev = Some(q);
                    i = end;
                }
                None => return None,
            }
        } else if self.flow == 0 {
            let indent = b.iter().take_while(|&&c| c == b' ').count();
            let content = &b[indent..];
            if content.is_empty() || content[0] == b'#' {
                return None;
            }
            if indent == 0
                && (content.starts_with(b"---") || content.starts_with(b"..."))
                && content.get(3).map_or(true, |c| c.is_ascii_whitespace())
            {
                // A new document (or its end): nothing is open any more.
                self.block.clear();
                i = 3;
            } else if content[0] == b'%' && indent == 0 {
                return None;
            } else {
                while self.block.last().is_some_and(|&c| c >= indent) {
                    self.block.pop();
                }
                i = indent;
            }
        }
        // Whether a node at the current position may start a block
        // collection (only at the start of the line or after `- `, `? `, `: `).
        let mut node_start = !continued;
        while i < b.len() {
            if self.over() {
                return None;
            }
            let c = b[i];
            let at_blank = i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t';
            match c {
                b' ' | b'\t' => {
                    i += 1;
                    continue;
                }
                b'#' if at_blank => return None,
                b'"' | b'\''
                    if (self.flow > 0
                        && matches!(self.prev, None | Some(b'[' | b'{' | b',' | b':' | b'?')))
                        || (self.flow == 0 && node_start) =>
                {
                    self.prev = Some(c);
                    let key_at = i;
                    match close_quote(b, i + 1, c) {
                        Some(end) => i = end,
                        None => {
                            self.quote = Some(c);
                            return None;
                        }
                    }
                    if self.flow == 0 && node_start && is_value_indicator(b, i) {
                        self.open_block(key_at);
                        i += 1;
                        node_start = true;
                        continue;
                    }
                    node_start = false;
                    continue;
                }
                b'[' | b'{' => {
                    self.prev = Some(c);
                    self.entries += 1;
                    self.flow += 1;
                    self.note();
                    node_start = false;
                    i += 1;
                    continue;
                }
                b']' | b'}' => {
                    self.prev = Some(c);
                    self.flow = self.flow.saturating_sub(1);
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if self.flow > 0 {
                if c == b',' {
                    self.entries += 1;
                }
                self.prev = Some(c);
                i += 1;
                continue;
            }
            let next_blank = b.get(i + 1).map_or(true, |c| *c == b' ' || *c == b'\t');
            match c {
                b'-' | b'?' if node_start && next_blank => {
                    self.open_block(i);
                    i += 1;
                }
                b'&' | b'!' if node_start => {
                    // Anchor or tag: a property of the node that follows.
                    while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
                        i += 1;
                    }
                }
                b'|' | b'>' if node_start => {
                    return Some(self.block.last().copied());
                }
                _ if node_start => {
                    // A plain scalar, perhaps a key: up to `: `, ` #` or the end.
                    let start = i;
                    while i < b.len() {
                        if b[i] == b':' && is_value_indicator(b, i) {
                            break;
                        }
                        if b[i] == b'#' && (b[i - 1] == b' ' || b[i - 1] == b'\t') {
                            return None;
                        }
                        i += 1;
                    }
                    if i < b.len() {
                        self.open_block(start);
                        i += 1;
                        continue;
                    }
                    return None;
                }
                _ => i += 1,
            }
        }
        None
    }
}

/// A `:` at `i` followed by a blank or the end of the line: a mapping value.
fn is_value_indicator(b: &[u8], i: usize) -> bool {
    b.get(i) == Some(&b':') && b.get(i + 1).map_or(true, |c| *c == b' ' || *c == b'\t')
}

/// The index just past the quote `q` closing a scalar that continues at
/// `from`, or `None` when it does not close on this line.
fn close_quote(b: &[u8], from: usize, q: u8) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' if q == b'"' => i += 2,
            c if c == q => {
                // '' inside single quotes is an escaped quote.
                if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(text: &str) -> usize {
        nesting_depth(text, usize::MAX)
    }

    #[test]
    fn depth_of_flow_and_block_collections() {
        let cases: &[(&str, usize)] = &[
            ("", 0),
            ("a", 0),
            ("a: b", 1),
            ("a: [1, [2, {c: d}]]", 4),
            ("a:\n  b:\n    c: d\n", 3),
            ("a:\n  b: 1\nc: 2\n", 2),
            ("- - - x\n", 3),
            ("- a: b\n  c: d\n", 2),
            ("a: \"[[[[\"\nb: '[[['' [['\n", 1),
            ("a: x # [[[[\n# {{{{\n", 1),
            ("a: x#[y\n", 1),
            ("a: |\n  [[[[\n  {{{{\nb: 1\n", 1),
            ("- >-\n    [[[[\n- 1\n", 1),
            ("a: \"multi\n  [[[ line\"\nb: 1\n", 1),
            ("a: &x [1]\nb: !!seq [1]\n", 2),
            ("\"quoted key\": {a: [1]}\n", 3),
            ("? complex\n: value\n", 1),
            ("url: http://x:80/a\n", 1),
            ("--- [[1]]\n--- {a: 1}\n", 2),
            ("a: [\n  [1,\n   2],\n  3]\n", 3),
            // A quote inside a plain scalar starts nothing, even on a new line.
            ("a: [it's, [x]]\n", 3),
            ("a: [it\n 's [[x]]]\n", 4),
            ("a: ['x', \"y\", {'k': \"[\"}]\n", 3),
            ("a: don't [\nb: 1\n", 1),
        ];
        for (text, want) in cases {
            assert_eq!(depth(text), *want, "{text:?}");
        }
    }

    #[test]
    fn the_scan_stops_past_the_limit() {
        let deep = format!("a: {}{}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(nesting_depth(&deep, 10), 11);
        assert_eq!(depth(&deep), 1001);
        let block: String = (0..200).map(|d| format!("{}k:\n", " ".repeat(d))).collect();
        assert_eq!(depth(&block), 200);
        assert_eq!(depth(&"- ".repeat(300)), 300);
    }

    #[test]
    fn entries_are_counted() {
        let count = |t: &str| measure(t, usize::MAX, usize::MAX).entries;
        assert_eq!(count("a: 1\nb: 2\n"), 2);
        assert_eq!(count("a: [1, 2, 3]\n"), 4);
        assert_eq!(count("- 1\n- 2\n"), 2);
        assert_eq!(count("a: '1,2,3'\nb: |\n  x, y\n"), 2);
        let list = format!("a: [{}0]", "0,".repeat(100_000));
        assert_eq!(count(&list), 100_002);
        // The scan stops just past the limit.
        assert_eq!(measure(&list, usize::MAX, 10).entries, 11);
    }

    #[test]
    fn the_examples_are_shallow() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let d = depth(&text);
                assert!((4..=20).contains(&d), "{}: {d}", path.display());
                seen += 1;
            }
        }
        assert!(seen > 0);
    }

    #[test]
    fn clipping_values() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(300);
        let c = clip(&long);
        assert_eq!(c.chars().count(), MAX_ECHO_CHARS);
        assert!(c.ends_with('…'));
        let exact = "x".repeat(MAX_ECHO_CHARS);
        assert_eq!(clip(&exact), exact);

        let m = format!("unknown action {:?} here", "a".repeat(500));
        let c = clip_quoted(&m);
        assert!(c.starts_with("unknown action \"aaa"));
        assert!(c.ends_with("…\" here"));
        assert_eq!(
            c.len(),
            "unknown action \"".len() + 199 + '…'.len_utf8() + "\" here".len()
        );
        let esc = format!("{:?} and {:?}", "\"".repeat(300), "ok");
        let c = clip_quoted(&esc);
        assert!(c.ends_with("…\" and \"ok\""), "{c}");
        assert_eq!(clip_quoted("no quotes"), "no quotes");
        assert_eq!(clip_quoted("a \"short\" b"), "a \"short\" b");
    }
}
