//! The mails: a red transition to the list (subject naming builder, branch, commit and worker;
//! a body with how the red was confirmed, the failing step, its failing lines, the last lines
//! of its log and how to fetch the whole log from any node), and a missing or quarantined
//! worker to its owner. Each carries its alert's Message-ID. Sent with lettre over SMTP
//! (plain or STARTTLS).

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use buildmesh_protocol::record::{BuildState, ResultCode};
use buildmesh_protocol::transitions::{Kind, Transition};

use super::Alert;
use crate::bisector::SearchView;
use crate::claimer::ClaimerClient;
use crate::config::NotifierSettings;
use crate::replica::ReplicaClient;
use buildmesh_protocol::health::HealthView;

const TAIL_LINES: usize = 40;

// A node's admitted name (its short id when it has none here; `?` for none at all).
fn name_in(nodes: &[crate::replica::NodeView], w: Option<buildmesh_protocol::NodeId>) -> String {
    match w {
        Some(w) => nodes
            .iter()
            .find(|n| n.id == w)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| w.short()),
        None => "?".into(),
    }
}

// What a culprit search found, as a mail tells it: the first bad commit (or the range still
// searched) and the probes that found it.
fn search_text(
    v: &SearchView,
    name_of: &dyn Fn(Option<buildmesh_protocol::NodeId>) -> String,
) -> String {
    let short = |s: &str| s[..s.len().min(12)].to_string();
    let mut text = String::new();
    match &v.culprit {
        Some(c) => {
            text.push_str(&format!("\nFirst bad commit: {}\n", c.sha));
            if let Some(a) = &c.author {
                text.push_str(&format!("Author:  {a}\n"));
            }
            if let Some(s) = &c.subject {
                text.push_str(&format!("Subject: {s}\n"));
            }
            let workers: std::collections::BTreeSet<_> = v.probes.iter().map(|p| p.worker).collect();
            text.push_str(&format!(
                "\nFound among the {} commits from the last green {} to {} by {} probes on {} workers in {} rounds{}:\n\n",
                v.commits,
                short(&v.good),
                short(&v.bad),
                v.probes.len(),
                workers.len(),
                v.rounds,
                if c.rechecked { ", the last good commit built again on the worker that failed it" } else { "" }
            ));
            for p in &v.probes {
                let o = match p.outcome {
                    Some(buildmesh_protocol::bisect::Outcome::Pass) => "pass",
                    Some(buildmesh_protocol::bisect::Outcome::Fail) => "fail",
                    Some(buildmesh_protocol::bisect::Outcome::NoVerdict) => "no verdict",
                    None => "not reported",
                };
                text.push_str(&format!(
                    "    {} {o:<12} on {} (build {})\n",
                    short(&p.sha),
                    name_of(Some(p.worker)),
                    p.build
                ));
            }
        }
        None => text.push_str(&format!(
            "\nThe builder did not build every commit since its last green: {} commits from {} to {}.\n\
             A search for the first bad one is under way; a follow-up in this thread will name it.\n",
            v.commits,
            short(&v.good),
            short(&v.bad)
        )),
    }
    text
}

async fn body(
    t: &Transition,
    note: Option<&SearchView>,
    claimer: &ClaimerClient,
    replica: &ReplicaClient,
    api_hint: &str,
) -> (String, String) {
    let build = {
        let views = claimer.views().clone();
        let t = t.clone();
        tokio::task::spawn_blocking(move || {
            views
                .builds(
                    buildmesh_store::Listing::Commit(&t.sha),
                    |b| {
                        b.purpose.is_ordinary()
                            && b.builder == t.builder
                            && b.branch == t.branch
                            && b.sha == t.sha
                    },
                    1,
                )
                .ok()?
                .pop()
        })
        .await
        .ok()
        .flatten()
    };
    let nodes = replica.nodes().await.unwrap_or_default();
    let name_of = |w| name_in(&nodes, w);
    let worker = name_of(build.as_ref().and_then(|b| b.worker));
    let what = match t.kind {
        Kind::Broken => "is red",
        Kind::Fixed => "is green again",
        Kind::StillFailing => "is still red",
    };
    let short = &t.sha[..t.sha.len().min(12)];
    // A reproduced red names both workers.
    let also = match build.as_ref().and_then(|b| b.confirmation.as_ref()) {
        Some(c) if t.result == ResultCode::Failure && c.result == BuildState::Failure => {
            if c.same_host {
                ", confirmed on one host only".to_string()
            } else {
                format!(", reproduced on {}", name_of(c.worker))
            }
        }
        _ => String::new(),
    };
    let culprit = note
        .and_then(|v| v.culprit.as_ref())
        .map(|c| format!("; first bad commit {}", &c.sha[..c.sha.len().min(12)]))
        .unwrap_or_default();
    let subject = format!(
        "buildmesh: {} on {} {what} at {short} (worker {worker}{also}){culprit}",
        t.builder, t.branch
    );
    let mut text = format!(
        "Builder:  {}\nBranch:   {}\nCommit:   {}\nWorker:   {worker}\nResult:   {} (before: {})\n",
        t.builder,
        t.branch,
        t.sha,
        t.result,
        t.previous
            .map(|p| p.to_string())
            .unwrap_or_else(|| "none".into())
    );
    if let Some(b) = &build {
        text.push_str(&format!("Build:    {}\n", b.id));
        if t.result == ResultCode::Failure {
            let line = match &b.confirmation {
                Some(c) if c.result == BuildState::Failure && !c.same_host => format!(
                    "reproduced on another host, {} (build {})",
                    name_of(c.worker),
                    c.build
                ),
                Some(c) if c.result == BuildState::Failure => format!(
                    "confirmed on one host only: {} failed again on a rerun (build {}); no other host could build it",
                    name_of(c.worker),
                    c.build
                ),
                Some(c) => format!(
                    "not confirmed: the confirmation build {} ended {}",
                    c.build, c.result
                ),
                None => "not asked for (this builder does not confirm reds)".to_string(),
            };
            text.push_str(&format!("Confirmed: {line}\n"));
        }
        if let Some(step) = b.steps.iter().find(|s| s.result != ResultCode::Success) {
            text.push_str(&format!(
                "\nFailing step: {} (exit code {})\n",
                step.name,
                step.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "none".into())
            ));
            if !step.failing_lines.is_empty() {
                text.push_str("\nFailing tests it named:\n\n");
                for l in &step.failing_lines {
                    text.push_str("    ");
                    text.extend(l.chars().take(300));
                    text.push('\n');
                }
            }
            if let Some(h) = step.log
                && let Ok(Some(log)) = replica.blob(h, b.worker).await
            {
                let log = String::from_utf8_lossy(&log);
                let lines: Vec<&str> = log.lines().collect();
                let from = lines.len().saturating_sub(TAIL_LINES);
                text.push_str(&format!(
                    "\nLast {} lines of its log:\n\n",
                    lines.len() - from
                ));
                for l in &lines[from..] {
                    text.push_str("    ");
                    text.extend(l.chars().take(400));
                    text.push('\n');
                }
            }
        }
        text.push_str(&format!(
            "\nThe whole log, from any node of the mesh:\n\n    buildmesh log --node {api_hint} {}\n",
            b.id
        ));
    }
    if let Some(v) = note {
        text.push_str(&search_text(v, &name_of));
    }
    (subject, text)
}

// The follow-up naming the culprit of a red whose mail named the range.
async fn culprit_body(
    red: &Transition,
    v: &SearchView,
    replica: &ReplicaClient,
) -> (String, String) {
    let nodes = replica.nodes().await.unwrap_or_default();
    let name_of = |w| name_in(&nodes, w);
    let first = v
        .culprit
        .as_ref()
        .map(|c| c.sha[..c.sha.len().min(12)].to_string())
        .unwrap_or_default();
    let subject = format!(
        "Re: buildmesh: {} on {}: first bad commit {first}",
        red.builder, red.branch
    );
    let text = format!(
        "Builder:  {}\nBranch:   {}\nRed at:   {}\n{}",
        red.builder,
        red.branch,
        red.sha,
        search_text(v, &name_of)
    );
    (subject, text)
}

// The owner's mail for a quarantined worker: why, which builds, who disagreed, what next.
async fn quarantine_body(
    name: &str,
    id: &buildmesh_protocol::NodeId,
    h: &HealthView,
    replica: &ReplicaClient,
    api_hint: &str,
) -> String {
    let nodes = replica.nodes().await.unwrap_or_default();
    let name_of = |w: &buildmesh_protocol::NodeId| {
        nodes
            .iter()
            .find(|n| n.id == *w)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| w.short())
    };
    let mut text = format!(
        "The buildmesh worker {name} ({id}) is quarantined: {}.\n\n\
         The builds that put it there, and what other workers found on the same commits:\n\n",
        h.reason
            .as_deref()
            .unwrap_or("its results disagree with other hosts")
    );
    for i in &h.builds {
        let other = match (&i.other_worker, &i.other_result) {
            (Some(w), Some(r)) => format!("{} found {r}", name_of(w)),
            (None, Some(r)) => format!("the build ended {r}"),
            _ => "no other result".to_string(),
        };
        text.push_str(&format!(
            "    {} {} on {} at {}: {other}\n",
            i.build,
            i.builder,
            i.branch,
            &i.sha[..i.sha.len().min(12)]
        ));
    }
    text.push_str(&format!(
        "\nThe mailing list was not told: the failures were not reproduced elsewhere.\n\
         While quarantined, {name} claims no ordinary builds, only re-validation builds of\n\
         commits other hosts built green, at low priority. It leaves quarantine by itself once\n\
         {} of them come back green, so check the host (memory, disk, power), then watch:\n\n\
         \x20   buildmesh nodes --node {api_hint}\n\n\
         A maintainer who knows the host is sound again can release it at once:\n\n\
         \x20   buildmesh release --genesis genesis.bm --key maintainer.key --subject {id} --episode {} --out release.bm\n\
         \x20   buildmesh publish --node {api_hint} release.bm\n",
        h.revalidations_needed, h.quarantines
    ));
    text
}

/// Builds and sends the mail for `alert`. An error means the server did not take it.
pub(crate) async fn send(
    settings: &NotifierSettings,
    alert: &Alert,
    note: Option<&SearchView>,
    claimer: &ClaimerClient,
    replica: &ReplicaClient,
    api_hint: &str,
) -> Result<(), String> {
    let (subject, text) = match alert {
        Alert::Transition(t) => body(t, note, claimer, replica, api_hint).await,
        Alert::Culprit { red } => match note {
            Some(v) => culprit_body(red, v, replica).await,
            None => return Err("a follow-up without its search".into()),
        },
        Alert::Missing { name, id, .. } => (
            format!("buildmesh: worker {name} is missing"),
            format!(
                "The buildmesh worker {name} ({id}) has not been heard from for longer than the\nconfigured time. Its jobs run elsewhere meanwhile. Check the host:\n\n    buildmesh nodes --node {api_hint}\n"
            ),
        ),
        Alert::Quarantined {
            name, id, health, ..
        } => (
            format!("buildmesh: worker {name} is quarantined"),
            quarantine_body(name, id, health, replica, api_hint).await,
        ),
    };
    let mut builder = Message::builder()
        .from(settings.from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(subject)
        .message_id(Some(alert.message_id()));
    if let Alert::Culprit { red } = alert {
        builder = builder
            .in_reply_to(red.message_id())
            .references(red.message_id());
    }
    let recipients = alert.recipients(&settings.to);
    for to in &recipients {
        builder = builder.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
    }
    // Plain 8-bit text reads best in any client; a body that cannot be sent that way (a very
    // long log line) falls back to the encoding lettre picks.
    let text = text.replace('\n', "\r\n");
    let body =
        Body::new_with_encoding(text, ContentTransferEncoding::EightBit).unwrap_or_else(Body::new);
    let part = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(body);
    let message = builder.singlepart(part).map_err(|e| e.to_string())?;
    let Some((host, port)) = settings.smtp.clone() else {
        return Err("no SMTP server configured".into());
    };
    let host = host.as_str();
    let mut transport = if settings.starttls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host).map_err(|e| e.to_string())?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
    }
    .port(port)
    .timeout(Some(std::time::Duration::from_secs(20)));
    if let (Some(user), Some(pass)) = (&settings.username, &settings.password) {
        transport = transport.credentials(Credentials::new(user.clone(), pass.clone()));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
