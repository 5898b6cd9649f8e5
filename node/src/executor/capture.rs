//! A step's output: the log kept in memory with a size cap, and the line analysis (warning
//! patterns, failure lines) done as the bytes arrive, so that a cut log does not lose counts.

use std::collections::VecDeque;

use regex::bytes::{Regex, RegexSet};

/// The most log kept per step; the tail is kept because that is where failures show.
pub(crate) const LOG_CAP: usize = 16 * 1024 * 1024;

/// How many failure lines a flaky step keeps (results travel in records: see the caps in
/// `buildmesh_protocol::record`).
pub(crate) const MAX_FAILING_LINES: usize = buildmesh_protocol::record::MAX_FAILING_LINES;

/// A line longer than this is analysed in pieces: a program writing megabytes without a newline
/// must not grow the pending buffer without bound.
const MAX_LINE: usize = 64 * 1024;

/// A failure line longer than this is shortened in `failing_lines` (results travel in records).
const MAX_FAILING_LINE_CHARS: usize = buildmesh_protocol::record::MAX_FAILING_LINE_CHARS;

/// The log bytes of one step (all of its runs), keeping at most `cap` bytes: the newest.
#[derive(Debug)]
pub(crate) struct LogBuf {
    data: VecDeque<u8>,
    dropped: u64,
    cap: usize,
}

impl LogBuf {
    pub(crate) fn new(cap: usize) -> Self {
        LogBuf {
            data: VecDeque::new(),
            dropped: 0,
            cap,
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if bytes.len() >= self.cap {
            self.dropped += (self.data.len() + bytes.len() - self.cap) as u64;
            self.data.clear();
            self.data.extend(&bytes[bytes.len() - self.cap..]);
            return;
        }
        let over = (self.data.len() + bytes.len()).saturating_sub(self.cap);
        if over > 0 {
            self.data.drain(..over);
            self.dropped += over as u64;
        }
        self.data.extend(bytes);
    }

    fn ends_line(&self) -> bool {
        self.data.back().is_none_or(|&b| b == b'\n')
    }

    /// The kept bytes; when some were dropped, starting at a line boundary after a note saying so.
    pub(crate) fn finish(self) -> Vec<u8> {
        let LogBuf {
            mut data,
            mut dropped,
            cap,
        } = self;
        if dropped == 0 {
            return data.into();
        }
        // A half line at the top reads as garbage; give up to one line more.
        if let Some(nl) = data.iter().position(|&b| b == b'\n') {
            data.drain(..=nl);
            dropped += nl as u64 + 1;
        }
        let mut out = format!(
            "buildmesh: log cut: the first {dropped} bytes were dropped to keep the last {} MiB\n",
            cap / (1024 * 1024)
        )
        .into_bytes();
        out.extend(data);
        out
    }
}

/// Everything captured of one step: the log of every run, and what the current run's lines say.
#[derive(Debug)]
pub(crate) struct Capture {
    log: LogBuf,
    /// The current run's incomplete last line.
    partial: Vec<u8>,
    warn: Option<RegexSet>,
    /// Lines of the current run that matched a warning pattern.
    pub(crate) run_warnings: u32,
    /// Lines of the current run naming a failure.
    pub(crate) run_failing: Vec<String>,
}

impl Capture {
    /// A capture whose lines are checked against `warn`; patterns that do not compile are noted
    /// in the log and ignored (the configuration checks them, so this is a safety net).
    pub(crate) fn new(warn: &[String]) -> Self {
        let mut capture = Capture {
            log: LogBuf::new(LOG_CAP),
            partial: Vec::new(),
            warn: None,
            run_warnings: 0,
            run_failing: Vec::new(),
        };
        let mut good = Vec::new();
        for pattern in warn {
            match Regex::new(pattern) {
                Ok(_) => good.push(pattern.as_str()),
                Err(e) => {
                    capture.note(&format!("buildmesh: warning pattern ignored: {e}"));
                }
            }
        }
        if !good.is_empty() {
            capture.warn = RegexSet::new(good).ok();
        }
        capture
    }

    /// Starts a new run: the line analysis is per run.
    pub(crate) fn start_run(&mut self) {
        self.partial.clear();
        self.run_warnings = 0;
        self.run_failing.clear();
    }

    /// Output bytes of the running process, in arrival order.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.log.push(bytes);
        let mut rest = bytes;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.analyse(&rest[..nl]);
            } else {
                self.partial.extend_from_slice(&rest[..nl]);
                let line = std::mem::take(&mut self.partial);
                self.analyse(&line);
            }
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_LINE {
            let line = std::mem::take(&mut self.partial);
            self.analyse(&line);
        }
    }

    /// Analyses the run's last line if it had no newline.
    pub(crate) fn end_run(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.analyse(&line);
        }
    }

    /// A line written by the executor itself, on a line of its own.
    pub(crate) fn note(&mut self, line: &str) {
        if !self.log.ends_line() {
            self.log.push(b"\n");
        }
        self.log.push(line.as_bytes());
        self.log.push(b"\n");
    }

    /// The raw bytes (without analysis): the output of a command read by the executor.
    pub(crate) fn append_log(&mut self, bytes: &[u8]) {
        self.log.push(bytes);
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.log.finish()
    }

    fn analyse(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(set) = &self.warn
            && set.is_match(line)
        {
            self.run_warnings = self.run_warnings.saturating_add(1);
        }
        if self.run_failing.len() < MAX_FAILING_LINES
            && (contains(line, b"FAIL") || contains(line, b"ERROR"))
        {
            let text = String::from_utf8_lossy(line);
            let text = buildmesh_protocol::record::cap_text(&text, MAX_FAILING_LINE_CHARS);
            self.run_failing.push(text);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keeps_the_tail_from_a_line_start() {
        let mut log = LogBuf::new(10);
        log.push(b"aaaa\nbbbb\n");
        log.push(b"cc\ndd\n");
        let out = String::from_utf8(log.finish()).unwrap();
        assert!(
            out.starts_with("buildmesh: log cut: the first 10 bytes"),
            "{out}"
        );
        assert!(out.ends_with("\ncc\ndd\n"), "{out}");
    }

    #[test]
    fn huge_push_keeps_its_tail() {
        let mut log = LogBuf::new(4);
        log.push(b"12\n");
        log.push(b"abcdef\nxyz");
        let out = String::from_utf8(log.finish()).unwrap();
        assert!(out.ends_with("\nxyz"), "{out}");
        assert!(out.contains("the first 10 bytes"), "{out}");
    }

    #[test]
    fn lines_split_across_chunks_are_analysed_once() {
        let mut c = Capture::new(&["^warning:".to_string()]);
        c.start_run();
        c.push(b"warn");
        c.push(b"ing: one\nFAI");
        c.push(b"L: two\r\nwarning: three");
        c.end_run();
        assert_eq!(c.run_warnings, 2);
        assert_eq!(c.run_failing, vec!["FAIL: two".to_string()]);
    }

    #[test]
    fn notes_start_on_their_own_line() {
        let mut c = Capture::new(&[]);
        c.push(b"partial");
        c.note("buildmesh: x");
        assert_eq!(c.finish(), b"partial\nbuildmesh: x\n");
    }
}
