//! Changes to the signed bytes of valid values. The input is a selector byte (which fixture) and
//! then edits of three bytes each: a position (two bytes, little-endian) and a byte to xor in.
//! The edits apply to the signed message, the signer's key (documents) and the signature,
//! laid end to end; the value is rebuilt around them and checked.

use buildmesh_protocol::NodeId;
use buildmesh_protocol::codec;
use buildmesh_protocol::docs::SignedDoc;
use buildmesh_protocol::keys::Signature;
use buildmesh_protocol::record::{Record, SignedRecord};
use buildmesh_protocol::wire::{SignedRequest, SignedSignal};

use crate::check;
use crate::fixtures::fixtures;

fn edit(buf: &mut [u8], edits: &[u8]) {
    for e in edits.chunks_exact(3) {
        let pos = u16::from_le_bytes([e[0], e[1]]) as usize % buf.len();
        buf[pos] ^= e[2];
    }
}

fn split_sig(buf: &[u8]) -> (&[u8], Signature) {
    let (msg, sig) = buf.split_at(buf.len() - 64);
    (msg, Signature(sig.try_into().expect("64 bytes")))
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&pick, edits)) = data.split_first() else {
        return;
    };
    let f = fixtures();
    let docs = f.docs();
    let n = f.records.len() + docs.len() + f.signals.len() + 1;
    let mut pick = pick as usize % n;

    if pick < f.records.len() {
        let signed: SignedRecord =
            codec::decode("record", &f.records[pick].bytes).expect("fixture decodes");
        let mut buf = [signed.envelope.as_slice(), &signed.sig.0].concat();
        let original = buf.clone();
        edit(&mut buf, edits);
        let (envelope, sig) = split_sig(&buf);
        let bytes = codec::encode(
            "record",
            &SignedRecord {
                envelope: envelope.to_vec(),
                sig,
            },
        )
        .expect("encodes");
        if Record::verify(&bytes).is_ok() {
            assert_eq!(buf, original, "a changed record verified");
        }
        check::record(&bytes);
        return;
    }
    pick -= f.records.len();

    if pick < docs.len() {
        let d = docs[pick];
        let s = &d.signatures[0];
        let mut buf = [d.body.as_slice(), s.key.as_bytes(), &s.sig.0].concat();
        let original = buf.clone();
        edit(&mut buf, edits);
        let (rest, sig) = split_sig(&buf);
        let (body, key) = rest.split_at(rest.len() - 32);
        let Ok(key) = NodeId::from_bytes(key.try_into().expect("32 bytes")) else {
            return;
        };
        let mut changed: SignedDoc = d.clone();
        changed.body = body.to_vec();
        changed.signatures[0].key = key;
        changed.signatures[0].sig = sig;
        if changed.verify_signatures().is_ok() {
            assert_eq!(buf, original, "a changed document verified");
        }
        check::doc(&changed);
        return;
    }
    pick -= docs.len();

    if pick < f.signals.len() {
        let s = &f.signals[pick];
        let mut buf = [s.bytes.as_slice(), &s.sig.0].concat();
        let original = buf.clone();
        edit(&mut buf, edits);
        let (bytes, sig) = split_sig(&buf);
        let changed = SignedSignal {
            bytes: bytes.to_vec(),
            sig,
        };
        if changed.verify().is_ok() {
            assert_eq!(buf, original, "a changed signal verified");
        }
        check::signal(&changed);
        return;
    }

    let r = &f.request;
    let mut buf = [r.bytes.as_slice(), &r.sig.0].concat();
    let original = buf.clone();
    edit(&mut buf, edits);
    let (bytes, sig) = split_sig(&buf);
    let changed = SignedRequest {
        bytes: bytes.to_vec(),
        sig,
    };
    if changed.verify().is_ok() {
        assert_eq!(buf, original, "a changed request verified");
    }
    check::signed_request(&changed);
}
