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
use crate::claimer::ClaimerClient;
use crate::config::NotifierSettings;
use crate::replica::ReplicaClient;
use buildmesh_protocol::health::HealthView;

const TAIL_LINES: usize = 40;

async fn body(
    t: &Transition,
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
    let name_of = |w: Option<buildmesh_protocol::NodeId>| match w {
        Some(w) => nodes
            .iter()
            .find(|n| n.id == w)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| w.short()),
        None => "?".into(),
    };
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
    let subject = format!(
        "buildmesh: {} on {} {what} at {short} (worker {worker}{also})",
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
    host: &str,
    port: u16,
    alert: &Alert,
    claimer: &ClaimerClient,
    replica: &ReplicaClient,
    api_hint: &str,
) -> Result<(), String> {
    let (subject, text) = match alert {
        Alert::Transition(t) => body(t, claimer, replica, api_hint).await,
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
