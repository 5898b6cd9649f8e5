//! A small SMTP server that keeps every message it receives: the demo's mailbox, the tests'
//! real SMTP peer, and `buildmesh smtp-sink` for the container mesh. Built on mailin-embedded.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use mailin_embedded::response::{INTERNAL_ERROR, OK};
use mailin_embedded::{Handler, Response, Server};
use serde::Serialize;

/// One received message.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Mail {
    /// Envelope sender.
    pub from: String,
    /// Envelope recipients.
    pub to: Vec<String>,
    /// The Subject header.
    pub subject: String,
    /// The Message-ID header.
    pub message_id: String,
    /// The whole message as received.
    pub raw: String,
    /// The body, decoded from quoted-printable when it was sent that way.
    pub body: String,
    /// When it was received.
    pub received: buildmesh_protocol::Timestamp,
}

/// The messages a sink holds, shared with whoever reads them.
#[derive(Clone, Debug, Default)]
pub struct Mailbox(Arc<Mutex<Vec<Mail>>>);

impl Mailbox {
    /// Every message so far.
    pub fn all(&self) -> Vec<Mail> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many messages so far.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none arrived.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug)]
struct Session {
    mailbox: Mailbox,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

// A header's value, with folded continuation lines joined.
fn header(raw: &str, name: &str) -> String {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = raw.lines().take_while(|l| !l.is_empty());
    let Some(first) = lines.find(|l| l.to_ascii_lowercase().starts_with(&prefix)) else {
        return String::new();
    };
    let mut value = first[prefix.len()..].trim().to_string();
    for l in lines.take_while(|l| l.starts_with(' ') || l.starts_with('\t')) {
        value.push(' ');
        value.push_str(l.trim());
    }
    value
}

impl Handler for Session {
    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_string();
        self.to = to.to_vec();
        self.data.clear();
        OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let raw = String::from_utf8_lossy(&self.data).replace("\r\n", "\n");
        let start = raw.find("\n\n").map(|i| i + 2).unwrap_or(raw.len());
        let body =
            if header(&raw, "Content-Transfer-Encoding").eq_ignore_ascii_case("quoted-printable") {
                decode_quoted_printable(&raw[start..])
            } else {
                raw[start..].to_string()
            };
        let mail = Mail {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            subject: header(&raw, "Subject"),
            message_id: header(&raw, "Message-ID"),
            body,
            raw,
            received: buildmesh_protocol::Timestamp::now(),
        };
        match self.mailbox.0.lock() {
            Ok(mut m) => {
                tracing::info!(subject = %mail.subject, to = ?mail.to, "mail received");
                m.push(mail);
                OK
            }
            Err(_) => INTERNAL_ERROR,
        }
    }
}

// RFC 2045 quoted-printable: `=XX` is a byte, `=` at a line's end joins it to the next.
fn decode_quoted_printable(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes.get(i + 1) == Some(&b'\n') => i += 2,
            b'=' if i + 2 < bytes.len() && text.is_char_boundary(i + 3) => {
                match u8::from_str_radix(&text[i + 1..i + 3], 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'=');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts a sink on `listener` in background threads; returns its mailbox.
pub fn start(listener: TcpListener) -> std::io::Result<Mailbox> {
    let mailbox = Mailbox::default();
    let session = Session {
        mailbox: mailbox.clone(),
        from: String::new(),
        to: Vec::new(),
        data: Vec::new(),
    };
    let mut server = Server::new(session);
    server
        .with_name("buildmesh-sink")
        .with_num_threads(2)
        .with_tcp_listener(listener);
    std::thread::Builder::new()
        .name("smtp-sink".into())
        .spawn(move || {
            if let Err(e) = server.serve() {
                tracing::error!(error = %e, "SMTP sink stopped");
            }
        })?;
    Ok(mailbox)
}

/// Binds `addr` and starts a sink there.
pub fn bind(addr: SocketAddr) -> std::io::Result<(SocketAddr, Mailbox)> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    Ok((local, start(listener)?))
}
