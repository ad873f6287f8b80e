//! Splits a decoded annotation stream into records without parsing them: a JSON array is cut at the
//! top-level commas (a small state machine that tracks strings, escapes and nesting), JSON Lines at
//! newlines. Each record keeps its index and the line:column where it starts, so that any later
//! problem can be named precisely. Records are handed out in batches of whole records; a batch owns
//! its bytes, so batches can be parsed on other threads while the next one is read.

use memchr::{memchr, memchr3};
use serde::Serialize;
use std::io::Read;

/// How the records are laid out in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Layout {
    /// One JSON array of records (RAM's own files).
    JsonArray,
    /// One record per line.
    JsonLines,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::JsonArray => "JSON array",
            Layout::JsonLines => "JSON Lines",
        }
    }
}

/// A 1-based line and a 1-based byte column in the decoded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

/// One record's bytes inside a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub start: usize,
    pub end: usize,
    /// 0-based record index in the file.
    pub index: u64,
    pub pos: Pos,
}

/// Whole records and the bytes they live in.
pub(crate) struct Batch {
    pub data: Vec<u8>,
    pub items: Vec<Item>,
}

impl Batch {
    pub fn bytes(&self, item: &Item) -> &[u8] {
        &self.data[item.start..item.end]
    }
}

/// A structural problem that makes the rest of the file unreadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitError {
    pub pos: Pos,
    pub record: Option<u64>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace seen yet.
    Start,
    /// After `[` or `,`: a record must come (or `]` right after `[`).
    BeforeRecord { first: bool },
    /// Inside a record of a JSON array.
    InRecord,
    /// After an object record's closing `}`: `,` or `]` must follow.
    AfterRecord,
    /// After the closing `]`: only whitespace may follow.
    Done,
    /// JSON Lines: inside a line.
    Lines,
}

/// Streams records out of a reader. See the module documentation.
pub(crate) struct Splitter<R> {
    reader: R,
    batch_bytes: usize,
    buf: Vec<u8>,
    /// Next byte of `buf` to look at.
    scan: usize,
    /// Offset of `buf[0]` in the decoded stream.
    base: u64,
    line: u64,
    line_start: u64,
    state: State,
    layout: Option<Layout>,
    // current record (array) or current line (JSON Lines)
    rec_start: usize,
    rec_pos: Pos,
    depth: u32,
    /// The current record is an object: only braces and quotes matter until it closes.
    object: bool,
    in_string: bool,
    escape: bool,
    last_sig: usize,
    next_index: u64,
    items: Vec<Item>,
    eof: bool,
    finished: bool,
    bom: bool,
}

const WS: [bool; 256] = {
    let mut t = [false; 256];
    t[b' ' as usize] = true;
    t[b'\t' as usize] = true;
    t[b'\r' as usize] = true;
    t[b'\n' as usize] = true;
    t
};

/// Bytes that matter to the element scanner outside strings.
const SPECIAL: [bool; 256] = {
    let mut t = [false; 256];
    let bytes = *b"\"{}[],\n";
    let mut k = 0;
    while k < bytes.len() {
        t[bytes[k] as usize] = true;
        k += 1;
    }
    t
};

/// [`SPECIAL`] without the comma.
const SPECIAL_NESTED: [bool; 256] = {
    let mut t = SPECIAL;
    t[b',' as usize] = false;
    t
};

impl<R: Read> Splitter<R> {
    pub fn new(reader: R, batch_bytes: usize) -> Self {
        Splitter {
            reader,
            batch_bytes: batch_bytes.max(1024),
            buf: Vec::new(),
            scan: 0,
            base: 0,
            line: 1,
            line_start: 0,
            state: State::Start,
            layout: None,
            rec_start: 0,
            rec_pos: Pos { line: 1, column: 1 },
            depth: 0,
            object: false,
            in_string: false,
            escape: false,
            last_sig: 0,
            next_index: 0,
            items: Vec::new(),
            eof: false,
            finished: false,
            bom: false,
        }
    }

    /// The layout found at the first non-blank byte (`None` before that).
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// Whether the stream started with a UTF-8 byte-order mark (skipped).
    pub fn bom(&self) -> bool {
        self.bom
    }

    /// Records handed out so far.
    pub fn records(&self) -> u64 {
        self.next_index
    }

    /// The next batch of whole records, `None` at the end of the stream. I/O errors come back as
    /// `Err(Ok(io))`, structural errors as `Err(Err(split))`.
    pub fn next_batch(&mut self) -> Result<Option<Batch>, Result<std::io::Error, SplitError>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if !self.eof {
                let old = self.buf.len();
                self.buf.resize(old + self.batch_bytes, 0);
                let n = read_full(&mut self.reader, &mut self.buf[old..]).map_err(Ok)?;
                self.buf.truncate(old + n);
                self.eof = n == 0;
            }
            self.scan_available().map_err(Err)?;
            if self.eof {
                self.finish().map_err(Err)?;
                self.finished = true;
            }
            if !self.items.is_empty() && (self.finished || self.buf.len() >= self.batch_bytes) {
                return Ok(Some(self.cut()));
            }
        }
    }

    /// Moves the bytes of all complete records into a batch, keeping the unfinished tail.
    fn cut(&mut self) -> Batch {
        let keep_from = match self.state {
            State::InRecord | State::Lines => self.rec_start.min(self.scan),
            _ => self.scan,
        };
        let tail = self.buf[keep_from..].to_vec();
        let mut data = std::mem::replace(&mut self.buf, tail);
        data.truncate(keep_from);
        self.base += keep_from as u64;
        self.scan -= keep_from;
        self.rec_start = self.rec_start.saturating_sub(keep_from);
        self.last_sig = self.last_sig.saturating_sub(keep_from);
        Batch {
            data,
            items: std::mem::take(&mut self.items),
        }
    }

    fn pos_at(&self, i: usize) -> Pos {
        Pos {
            line: self.line,
            column: self.base + i as u64 - self.line_start + 1,
        }
    }

    fn error(&self, i: usize, record: Option<u64>, message: String) -> SplitError {
        SplitError {
            pos: self.pos_at(i),
            record,
            message,
        }
    }

    fn scan_available(&mut self) -> Result<(), SplitError> {
        while self.scan < self.buf.len() {
            match self.state {
                State::Start => self.scan_start()?,
                State::BeforeRecord { first } => self.scan_before_record(first)?,
                State::InRecord if self.object && !self.in_string => self.scan_object(),
                State::InRecord => self.scan_record(),
                State::AfterRecord => self.scan_after_record()?,
                State::Done => self.scan_done()?,
                State::Lines => self.scan_lines(),
            }
        }
        Ok(())
    }

    fn newline_at(&mut self, i: usize) {
        self.line += 1;
        self.line_start = self.base + i as u64 + 1;
    }

    fn skip_ws(&mut self) -> Option<usize> {
        while self.scan < self.buf.len() {
            let b = self.buf[self.scan];
            if !WS[b as usize] {
                return Some(self.scan);
            }
            if b == b'\n' {
                self.newline_at(self.scan);
            }
            self.scan += 1;
        }
        None
    }

    fn scan_start(&mut self) -> Result<(), SplitError> {
        if self.base == 0 && self.scan == 0 && self.buf.starts_with(b"\xEF\xBB\xBF") {
            self.bom = true;
            self.scan = 3;
            self.line_start = 3;
        }
        let Some(i) = self.skip_ws() else {
            return Ok(());
        };
        match self.buf[i] {
            b'[' => {
                self.layout = Some(Layout::JsonArray);
                self.state = State::BeforeRecord { first: true };
                self.scan = i + 1;
            }
            b'{' => {
                self.layout = Some(Layout::JsonLines);
                self.state = State::Lines;
                self.rec_start = (self.line_start - self.base) as usize;
                self.scan = self.rec_start;
            }
            b => {
                return Err(self.error(
                    i,
                    None,
                    format!(
                        "expected `[` (a JSON array of records) or `{{` (JSON Lines), found {}",
                        describe_byte(b)
                    ),
                ))
            }
        }
        Ok(())
    }

    fn scan_before_record(&mut self, first: bool) -> Result<(), SplitError> {
        let Some(i) = self.skip_ws() else {
            return Ok(());
        };
        match self.buf[i] {
            b']' if first => {
                self.state = State::Done;
                self.scan = i + 1;
            }
            b']' | b',' => {
                return Err(self.error(
                    i,
                    Some(self.next_index),
                    format!(
                        "expected record {} after `,`, found {} (a trailing or doubled comma is not JSON)",
                        self.next_index,
                        describe_byte(self.buf[i])
                    ),
                ))
            }
            _ => {
                self.state = State::InRecord;
                self.rec_start = i;
                self.rec_pos = self.pos_at(i);
                self.depth = 0;
                self.object = self.buf[i] == b'{';
                self.in_string = false;
                self.escape = false;
                self.last_sig = i;
            }
        }
        Ok(())
    }

    /// Lines start after each newline in `buf[from..to]`.
    fn count_lines(&mut self, from: usize, to: usize) {
        let seg = &self.buf[from..to];
        if let Some(last) = memchr::memrchr(b'\n', seg) {
            self.line += memchr::memchr_iter(b'\n', seg).count() as u64;
            self.line_start = self.base + (from + last) as u64 + 1;
        }
    }

    /// The hot loop for object records (RAM's): outside strings only braces and quotes matter, and
    /// the record ends where its outermost brace closes.
    fn scan_object(&mut self) {
        let n = self.buf.len();
        let mut i = self.scan;
        while i < n {
            if self.in_string {
                self.scan = i;
                self.scan_record();
                if self.in_string || self.state != State::InRecord {
                    return;
                }
                i = self.scan;
                continue;
            }
            let Some(k) = memchr3(b'"', b'{', b'}', &self.buf[i..]) else {
                self.count_lines(i, n);
                i = n;
                break;
            };
            self.count_lines(i, i + k);
            i += k;
            match self.buf[i] {
                b'"' => self.in_string = true,
                b'{' => self.depth += 1,
                _ => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.items.push(Item {
                            start: self.rec_start,
                            end: i + 1,
                            index: self.next_index,
                            pos: self.rec_pos,
                        });
                        self.next_index += 1;
                        self.state = State::AfterRecord;
                        self.scan = i + 1;
                        return;
                    }
                }
            }
            i += 1;
        }
        self.scan = i;
    }

    fn scan_after_record(&mut self) -> Result<(), SplitError> {
        let Some(i) = self.skip_ws() else {
            return Ok(());
        };
        match self.buf[i] {
            b',' => self.state = State::BeforeRecord { first: false },
            b']' => self.state = State::Done,
            b => {
                return Err(self.error(
                    i,
                    Some(self.next_index - 1),
                    format!(
                        "expected `,` or `]` after the record's closing `}}`, found {}",
                        describe_byte(b)
                    ),
                ))
            }
        }
        self.scan = i + 1;
        Ok(())
    }

    /// The general loop (any JSON value as a record): finds where the current array element ends.
    fn scan_record(&mut self) {
        let n = self.buf.len();
        let mut i = self.scan;
        while i < n {
            if self.in_string {
                if self.escape {
                    self.escape = false;
                    i += 1;
                    continue;
                }
                match memchr3(b'"', b'\\', b'\n', &self.buf[i..]) {
                    None => i = n,
                    Some(k) => {
                        i += k;
                        match self.buf[i] {
                            b'"' => {
                                self.in_string = false;
                                self.last_sig = i + 1;
                                if self.object {
                                    self.scan = i + 1;
                                    return;
                                }
                            }
                            b'\\' => self.escape = true,
                            _ => self.newline_at(i),
                        }
                        i += 1;
                    }
                }
                continue;
            }
            // skip bytes that cannot change the structure (digits, spaces, colons, letters)
            let start = i;
            // inside a nested list or object a comma cannot end the record
            let special = if self.depth > 0 {
                &SPECIAL_NESTED
            } else {
                &SPECIAL
            };
            while i < n && !special[self.buf[i] as usize] {
                i += 1;
            }
            if i > start {
                if let Some(k) = self.buf[start..i].iter().rposition(|b| !WS[*b as usize]) {
                    self.last_sig = start + k + 1;
                }
                if i == n {
                    break;
                }
            }
            let b = self.buf[i];
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b',' | b']' if self.depth == 0 => {
                    // the element ends here
                    self.items.push(Item {
                        start: self.rec_start,
                        end: self.last_sig,
                        index: self.next_index,
                        pos: self.rec_pos,
                    });
                    self.next_index += 1;
                    self.state = if b == b',' {
                        State::BeforeRecord { first: false }
                    } else {
                        State::Done
                    };
                    self.scan = i + 1;
                    return;
                }
                b'}' | b']' => self.depth = self.depth.saturating_sub(1),
                b'\n' => self.newline_at(i),
                _ => {}
            }
            if !WS[b as usize] {
                self.last_sig = i + 1;
            }
            i += 1;
        }
        self.scan = i;
    }

    fn scan_done(&mut self) -> Result<(), SplitError> {
        match self.skip_ws() {
            None => Ok(()),
            Some(i) => Err(self.error(
                i,
                None,
                format!(
                    "unexpected {} after the closing `]` of the array (after {} records)",
                    describe_byte(self.buf[i]),
                    self.next_index
                ),
            )),
        }
    }

    /// JSON Lines: every non-blank line is a record.
    fn scan_lines(&mut self) {
        while self.scan < self.buf.len() {
            match memchr(b'\n', &self.buf[self.scan..]) {
                None => {
                    self.scan = self.buf.len();
                }
                Some(k) => {
                    let nl = self.scan + k;
                    self.push_line(self.rec_start, nl);
                    self.newline_at(nl);
                    self.scan = nl + 1;
                    self.rec_start = nl + 1;
                }
            }
        }
    }

    fn push_line(&mut self, start: usize, end: usize) {
        let line = &self.buf[start..end];
        let Some(first) = line.iter().position(|b| !WS[*b as usize]) else {
            return;
        };
        let last = line.iter().rposition(|b| !WS[*b as usize]).unwrap_or(first) + 1;
        self.items.push(Item {
            start: start + first,
            end: start + last,
            index: self.next_index,
            pos: Pos {
                line: self.line,
                column: first as u64 + 1,
            },
        });
        self.next_index += 1;
    }

    /// End of stream: a record or the array must not be left open.
    fn finish(&mut self) -> Result<(), SplitError> {
        let end = self.buf.len();
        match self.state {
            State::Start => Err(self.error(
                end,
                None,
                "the file is empty (expected a JSON array of records or JSON Lines)".into(),
            )),
            State::BeforeRecord { .. } | State::AfterRecord => Err(self.error(
                end,
                None,
                format!(
                    "the file ends before the array's closing `]` (after {} records): truncated?",
                    self.next_index
                ),
            )),
            State::InRecord => Err(SplitError {
                pos: self.pos_at(end),
                record: Some(self.next_index),
                message: format!(
                    "the file ends inside record {} (which starts at line {}, column {}): truncated?",
                    self.next_index, self.rec_pos.line, self.rec_pos.column
                ),
            }),
            State::Done => Ok(()),
            State::Lines => {
                if self.rec_start < end {
                    self.push_line(self.rec_start, end);
                    self.rec_start = end;
                }
                Ok(())
            }
        }
    }
}

fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("`{}`", b as char)
    } else {
        format!("byte 0x{b:02X}")
    }
}

/// Reads until `buf` is full or the reader is exhausted.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rec = (u64, Pos, String);

    fn split(text: &str, batch: usize) -> Result<(Vec<Rec>, Option<Layout>), SplitError> {
        let mut s = Splitter::new(text.as_bytes(), batch);
        let mut out = Vec::new();
        loop {
            match s.next_batch() {
                Ok(Some(b)) => {
                    for it in &b.items {
                        out.push((
                            it.index,
                            it.pos,
                            String::from_utf8(b.bytes(it).to_vec()).unwrap(),
                        ));
                    }
                }
                Ok(None) => return Ok((out, s.layout())),
                Err(Err(e)) => return Err(e),
                Err(Ok(e)) => panic!("io {e}"),
            }
        }
    }

    fn p(line: u64, column: u64) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn array_records_with_positions_across_tiny_batches() {
        let text = "[\n {\"a\": \"x,]\\\"}\"},\n {\"b\": [1, [2]]} ,3\r\n,\"s\"\n]\n";
        for batch in [1, 7, 1 << 20] {
            let (recs, layout) = split(text, batch).unwrap();
            assert_eq!(layout, Some(Layout::JsonArray));
            assert_eq!(
                recs,
                vec![
                    (0, p(2, 2), "{\"a\": \"x,]\\\"}\"}".to_string()),
                    (1, p(3, 2), "{\"b\": [1, [2]]}".to_string()),
                    (2, p(3, 19), "3".to_string()),
                    (3, p(4, 2), "\"s\"".to_string()),
                ],
                "batch {batch}"
            );
        }
    }

    #[test]
    fn pretty_printed_objects_keep_their_lines() {
        let text =
            "[\n  {\n    \"a\": {\"b\": \"}{\\\"\"},\r\n    \"c\": [1,\n 2]\n  },\n  {\"d\": 1}\n]";
        for batch in [1, 5, 1 << 20] {
            let (recs, _) = split(text, batch).unwrap();
            let starts: Vec<(u64, Pos)> = recs.iter().map(|r| (r.0, r.1)).collect();
            assert_eq!(starts, vec![(0, p(2, 3)), (1, p(7, 3))], "batch {batch}");
            assert!(recs[0].2.ends_with("2]\n  }"), "{:?}", recs[0].2);
            assert_eq!(recs[1].2, "{\"d\": 1}");
        }
        let e = split("[{\"a\": 1}\n x]", 4).unwrap_err();
        assert_eq!((e.pos, e.record), (p(2, 2), Some(0)));
        assert!(
            e.message
                .contains("expected `,` or `]` after the record's closing `}`"),
            "{e:?}"
        );
        let e = split("[{\"a\": 1}\n", 4).unwrap_err();
        assert!(e.message.contains("before the array's closing"), "{e:?}");
    }

    #[test]
    fn json_lines_skip_blank_lines_and_strip_crlf() {
        let (recs, layout) = split("{\"a\":1}\r\n\r\n  {\"b\":2}\n{\"c\":3}", 4).unwrap();
        assert_eq!(layout, Some(Layout::JsonLines));
        assert_eq!(
            recs,
            vec![
                (0, p(1, 1), "{\"a\":1}".to_string()),
                (1, p(3, 3), "{\"b\":2}".to_string()),
                (2, p(4, 1), "{\"c\":3}".to_string()),
            ]
        );
    }

    #[test]
    fn structural_errors_name_position_and_record() {
        let e = split("", 16).unwrap_err();
        assert!(e.message.contains("empty"), "{e:?}");
        let e = split(" \n  ", 16).unwrap_err();
        assert!(e.message.contains("empty"), "{e:?}");
        let e = split("[{\"a\": 1}, {\"b\": [1, 2", 4).unwrap_err();
        assert_eq!(e.record, Some(1));
        assert!(
            e.message
                .contains("inside record 1 (which starts at line 1, column 12)"),
            "{e:?}"
        );
        let e = split("[{\"a\": 1},\n", 4).unwrap_err();
        assert!(e.message.contains("before the array's closing"), "{e:?}");
        let e = split("[1,\n ,2]", 4).unwrap_err();
        assert_eq!((e.pos, e.record), (p(2, 2), Some(1)));
        let e = split("[1] x", 4).unwrap_err();
        assert_eq!(e.pos, p(1, 5));
        let e = split("\n\n  nope", 4).unwrap_err();
        assert_eq!(e.pos, p(3, 3));
        assert!(e.message.contains("found `n`"), "{e:?}");
        assert!(split("[]", 4).unwrap().0.is_empty());
    }
}
