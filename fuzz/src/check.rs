//! The properties, one function per decoder. Each takes outside bytes (or a value decoded from
//! them) and panics only when a property is broken.

use std::fmt::Debug;

use buildmesh_protocol::builders::{BuilderConfig, MAX_MAX_ATTEMPTS, glob_match};
use buildmesh_protocol::codec;
use buildmesh_protocol::docs::{Doc, DocKind, Genesis, SignedDoc};
use buildmesh_protocol::entitle;
use buildmesh_protocol::record::{
    Body, CommitSeen, Envelope, MAX_SUBJECT_CHARS, Record, SignedRecord,
};
use buildmesh_protocol::webhook::{Push, url_matches};
use buildmesh_protocol::wire::{
    Gossip, MAX_FRAME_BYTES, Request, Response, SignedRequest, SignedSignal,
};
use buildmesh_protocol::{Hash, Timestamp};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fixtures::{T0, fixtures};

/// Encoding `value` and decoding it again gives `value`, and encoding that gives the same bytes
/// (what is hashed and signed must not drift through a decode).
pub fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let bytes = codec::encode("value", value).expect("a decoded value encodes");
    let again: T = codec::decode("value", &bytes).expect("an encoded value decodes");
    assert_eq!(&again, value, "decode(encode(v)) != v");
    let bytes2 = codec::encode("value", &again).expect("encodes");
    assert_eq!(bytes, bytes2, "encoding is not stable");
}

/// The value renders as the API and the CLI render it: Debug, and JSON (where every time,
/// key and hash is printed as text).
pub fn render<T: Serialize + Debug>(value: &T) {
    let _ = format!("{value:?}");
    serde_json::to_string(value).expect("every decoded value renders as JSON");
}

/// A record's bytes, as a peer sends them (gossip, pull answers).
pub fn record(bytes: &[u8]) {
    let f = fixtures();
    let trusted = Record::from_trusted(bytes);
    if let Ok(r) = &trusted {
        // Whatever the fields say, the rules over them decide without panicking.
        let body = r.body().ok();
        let _ = entitle::record(&f.trust, &r.envelope, body.as_ref(), T0);
        let _ = entitle::record(&f.trust, &r.envelope, body.as_ref(), r.envelope.time);
    }
    let Ok(r) = Record::verify(bytes) else {
        return;
    };
    let signed: SignedRecord = codec::decode("record", bytes).expect("a verified record decodes");
    assert!(
        f.genuine(&signed.envelope),
        "a record verified that no fixture key signed: {:?}",
        r.envelope
    );
    assert_eq!(r.hash, Hash::of(&signed.envelope));
    assert_eq!(
        trusted.expect("a verified record decodes as trusted"),
        r,
        "from_trusted and verify disagree"
    );
    round_trip(&signed);
    round_trip(&r.envelope);
    let again: Envelope = codec::decode("envelope", &signed.envelope).expect("decodes");
    assert_eq!(again, r.envelope);
    render(&r.envelope);
    let _ = format!(
        "{} {} {}",
        r.envelope.author, r.envelope.time, r.envelope.kind
    );
    match r.body() {
        Ok(body) => {
            assert!(r.envelope.kind.is_known());
            assert_eq!(body.kind(), r.envelope.kind);
            round_trip(&body);
            render(&body);
            body_values(&body);
        }
        // A body that does not decode (or of a kind unknown here) is kept, not counted.
        Err(_) => {}
    }
}

fn body_values(body: &Body) {
    match body {
        Body::BuildResult(b) => {
            let _ = format!("{} {} {}", b.started, b.finished, b.result);
            let _ = b.finished.since(b.started);
            let mut fitted = b.clone();
            fitted.fit();
        }
        Body::CommitSeen(c) => {
            if let Some(s) = &c.subject {
                assert!(CommitSeen::subject_of(s).chars().count() <= MAX_SUBJECT_CHARS);
            }
            if let Some(req) = &c.request {
                signed_request(req);
            }
            if let Some(k) = &c.requested_by {
                let _ = entitle::may_request_announce(&fixtures().trust, k, T0);
            }
        }
        Body::Publish(p) => doc(&p.doc),
        Body::Claim(c) => {
            let _ = c.key.id();
        }
        Body::NotificationSent(_) => {}
        Body::Rebuild(r) => {
            signed_request(&r.request);
            let _ = r.purpose();
            let _ = entitle::rebuild(&fixtures().trust, T0, r);
        }
        Body::Cancel(c) => {
            signed_request(&c.request);
            let _ = entitle::cancel(&fixtures().trust, T0, c);
        }
        Body::Bisect(b) => {
            if let Some(r) = &b.request {
                signed_request(r);
            }
            let _ = entitle::bisect(&fixtures().trust, &b.red_worker, T0, b);
            // A search over whatever range it names takes its first step without panicking.
            if b.shas.len() <= buildmesh_protocol::record::MAX_BISECT_COMMITS
                && let Ok(mut search) = buildmesh_protocol::bisect::Bisection::new(
                    b.shas.clone(),
                    b.red_worker,
                    b.settings(),
                )
            {
                let _ = search.step(&[], &[b.red_worker], T0);
                let _ = search.open();
            }
        }
        Body::Probes(p) => {
            // Replayed on a search of ten commits: outcomes of any index, any worker, any time.
            let shas: Vec<String> = (0..10).map(|i| format!("{i:040x}")).collect();
            let red = p
                .idle
                .first()
                .copied()
                .unwrap_or(fixtures().maintainer.id());
            if let Ok(mut search) =
                buildmesh_protocol::bisect::Bisection::new(shas, red, Default::default())
            {
                let reports: Vec<_> = p
                    .reports
                    .iter()
                    .map(|(i, w, o)| (*i as usize, *w, *o))
                    .collect();
                let _ = search.step(&reports, &p.idle, p.now);
                let _ = search.open();
                let _ = search.culprit();
            }
        }
    }
}

/// A document file, or a document carried in a record or a hello.
pub fn doc(d: &SignedDoc) {
    let f = fixtures();
    round_trip(d);
    assert_eq!(
        &SignedDoc::from_bytes(&d.to_bytes()).expect("a document's file reads back"),
        d
    );
    let _ = d.id();
    render(d);
    let verified = d.verify_signatures();
    if let Ok(signers) = &verified
        && !signers.is_empty()
    {
        assert!(
            f.genuine(&d.body),
            "a document verified that no fixture key signed: {d:?}"
        );
    }
    if let Ok(parsed) = d.parse() {
        render(&parsed);
        if let Doc::BuilderConfig(c) = &parsed {
            config(c);
        }
    }
    if let Ok(g) = Genesis::verify(d) {
        assert_eq!(d.kind, DocKind::Genesis);
        assert!(g.genesis.threshold >= 1);
        assert!(g.genesis.threshold as usize <= g.genesis.maintainers.len());
        let _ = g.mesh.to_string();
    }
    let mut trust = f.trust.clone();
    let checked = match d.kind {
        DocKind::Genesis => Genesis::verify(d).map(|_| ()).is_ok(),
        DocKind::Admission => trust.check_admission(d).is_ok(),
        DocKind::Revocation => trust.check_revocation(d).is_ok(),
        DocKind::BuilderConfig => trust.check_config(d).is_ok(),
        DocKind::Release => trust.check_release(d).is_ok(),
    };
    let applied = trust.apply(d).is_ok();
    if checked || applied {
        assert!(
            verified.is_ok() && f.genuine(&d.body),
            "the trust took a document that no maintainer signed: {d:?}"
        );
    }
}

/// A document file (`buildmesh publish`, `--genesis`, a node's admission file).
pub fn doc_bytes(bytes: &[u8]) {
    if let Ok(d) = SignedDoc::from_bytes(bytes) {
        doc(&d);
    }
}

/// A signal as gossiped.
pub fn signal(s: &SignedSignal) {
    round_trip(s);
    let Ok(sig) = s.verify() else {
        return;
    };
    assert!(
        fixtures().genuine(&s.bytes),
        "a signal verified that its sender did not sign: {sig:?}"
    );
    round_trip(&sig);
    render(&sig);
    let _ = format!("{} {}", sig.sender(), sig.time());
    let _ = entitle::is_due(sig.time(), T0);
    let _ = Timestamp::now().since(sig.time());
}

/// A message on the mesh topic.
pub fn gossip(bytes: &[u8]) {
    let Ok(g) = Gossip::from_bytes(bytes) else {
        return;
    };
    round_trip(&g);
    assert_eq!(Gossip::from_bytes(&g.to_bytes()).expect("reads back"), g);
    match &g {
        Gossip::Record(b) => record(b),
        Gossip::Signal(s) => signal(s),
    }
}

/// A signed API request inside a record or an HTTP body.
pub fn signed_request(r: &SignedRequest) {
    round_trip(r);
    assert_eq!(
        &SignedRequest::from_bytes(&r.to_bytes()).expect("reads back"),
        r
    );
    let Ok(req) = r.verify() else {
        return;
    };
    assert!(
        fixtures().genuine(&r.bytes),
        "a request verified that its caller did not sign: {req:?}"
    );
    round_trip(&req);
    render(&req);
    let _ = entitle::may_request_announce(&fixtures().trust, &req.key, req.time);
}

/// An HTTP body to the API's signed write endpoints.
pub fn signed_request_bytes(bytes: &[u8]) {
    if let Ok(r) = SignedRequest::from_bytes(bytes) {
        signed_request(&r);
    }
}

/// A request frame's payload, decoded as the node's network codec decodes it.
pub fn wire_request(bytes: &[u8]) {
    let Ok(req) = codec::decode_limited::<Request>("request", bytes, MAX_FRAME_BYTES) else {
        return;
    };
    round_trip(&req);
    render(&req);
    if let Request::Hello(h) = &req {
        doc(&h.admission);
        let _ = fixtures().trust.check_admission(&h.admission);
    }
}

/// A response frame's payload, decoded as the node's network codec decodes it.
pub fn wire_response(bytes: &[u8]) {
    let Ok(res) = codec::decode_limited::<Response>("response", bytes, MAX_FRAME_BYTES) else {
        return;
    };
    round_trip(&res);
    render(&res);
    match &res {
        Response::Hello(h) => doc(&h.admission),
        Response::Records(rs) => rs.iter().for_each(|r| record(r)),
        _ => {}
    }
}

/// A builder configuration, from a file or a signed document, is used without panicking.
pub fn config(c: &BuilderConfig) {
    round_trip(c);
    render(c);
    for b in &c.builders {
        let _ = c.builder(&b.name);
        for p in &b.branches {
            let _ = glob_match(p, "main");
            let _ = glob_match(p, p);
        }
        let _ = b.wants_branch("3.12");
        let _ = b.accepts(&b.requires);
    }
}

/// The text of a builder configuration file.
pub fn builder_toml(text: &str) {
    match BuilderConfig::from_toml(Hash::ZERO, text) {
        Ok(c) => {
            assert!(!c.builders.is_empty());
            let mut names = std::collections::BTreeSet::new();
            for b in &c.builders {
                assert!(names.insert(b.name.clone()), "builder named twice");
                assert!(!b.name.is_empty() && !b.steps.is_empty() && !b.branches.is_empty());
                assert!((1..=MAX_MAX_ATTEMPTS).contains(&b.max_attempts));
                for s in &b.steps {
                    assert!(s.timeout_ms > 0 && s.retries <= 10);
                }
            }
            config(&c);
            let doc = SignedDoc::new(&c).expect("a parsed configuration encodes");
            assert_eq!(doc.body::<BuilderConfig>().expect("decodes"), c);
        }
        Err(e) => {
            assert!(e.line >= 1 && e.column >= 1);
            assert!(e.line <= text.matches('\n').count() + 1, "{e}");
            let _ = e.to_string();
        }
    }
}

/// A push webhook's body (after its signature was checked).
pub fn webhook(bytes: &[u8]) {
    let Ok(Some(p)) = Push::from_json(bytes) else {
        return;
    };
    assert!(!p.repo_urls.is_empty());
    for (i, u) in p.repo_urls.iter().enumerate() {
        assert!(!u.is_empty() && u.trim() == u);
        assert!(!p.repo_urls[..i].contains(u), "a repeated URL");
        assert!(url_matches(u, &p), "a push does not match its own URL {u}");
    }
    assert!(matches!(p.sha.len(), 40 | 64));
    assert!(
        p.sha
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    );
    assert!(!p.branch.is_empty());
    if let Some(s) = &p.subject {
        assert!(CommitSeen::subject_of(s).chars().count() <= MAX_SUBJECT_CHARS);
    }
    let _ = url_matches(&String::from_utf8_lossy(bytes), &p);
}
