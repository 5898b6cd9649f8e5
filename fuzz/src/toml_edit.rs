//! Edits to a valid builder configuration file. The input is a list of edits of four bytes
//! each: what (delete, insert a token, set a byte, duplicate a run), a position (two bytes,
//! little-endian) and an argument.

use crate::check;
use crate::fixtures::BUILDER_TOML;

// Pieces of the format: random bytes rarely make a table header or a quoted duration.
const TOKENS: &[&str] = &[
    "\"",
    "'",
    "=",
    "[",
    "]",
    "{",
    "}",
    ",",
    "\n",
    "#",
    "\"\"\"",
    "'''",
    "\\",
    "\\u0000",
    "[[builder]]\n",
    "[[builder.step]]\n",
    "[builder]\n",
    "name = \"x\"\n",
    "name = \"\"\n",
    "run = \" \"\n",
    "repo = \"r\"\n",
    "branches = []\n",
    "branches = [\"*\"]\n",
    "max_attempts = 0\n",
    "max_attempts = 4294967295\n",
    "retries = 11\n",
    "priority = -1\n",
    "timeout = \"0s\"\n",
    "timeout = \"1ns\"\n",
    "timeout = \"99999999999999999h\"\n",
    "timeout = \"18446744073709551615s\"\n",
    "warn = [\"(\"]\n",
    "warn = [\"a{99999}\"]\n",
    "version = -1\n",
    "version = 18446744073709551615\n",
    "1e400",
    "inf",
    "nan",
    "0x7f",
    "1979-05-27T07:32:00Z",
    "true",
    "é",
    "\u{10FFFF}",
    "\r\n",
    "\t",
    "tags = [\"stable\"]\n",
    "requires = { os = \"*\" }\n",
    "env = { A = \"1\" }\n",
    "a.b.c = 1\n",
];

/// The longest text tried: the edits can double it.
const MAX_LEN: usize = 64 * 1024;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut text = BUILDER_TOML.as_bytes().to_vec();
    for e in data.chunks_exact(4) {
        let pos = u16::from_le_bytes([e[1], e[2]]) as usize % (text.len() + 1);
        let arg = e[3] as usize;
        match e[0] % 4 {
            0 => {
                let end = (pos + arg % 16 + 1).min(text.len());
                text.drain(pos..end);
            }
            1 => {
                let token = TOKENS[arg % TOKENS.len()].as_bytes();
                text.splice(pos..pos, token.iter().copied());
            }
            2 if pos < text.len() => text[pos] = e[3],
            2 => {}
            _ => {
                let end = (pos + arg + 1).min(text.len());
                let run = text[pos..end].to_vec();
                text.splice(pos..pos, run);
            }
        }
        if text.len() > MAX_LEN {
            return;
        }
    }
    if let Ok(text) = std::str::from_utf8(&text) {
        check::builder_toml(text);
    }
}
